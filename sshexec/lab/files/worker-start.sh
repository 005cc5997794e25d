#!/bin/sh
# Entry point of an sshexec lab worker container; runs at every (re)start.
#
#   SSHEXEC_AUTHORIZED_KEY=<key line>  key installed for every login user (deploy,
#                                      nodocker, deploy-fish, deploy-tcsh)
#   SSHEXEC_USER_CA=<public key line>  a CA whose user certificates sshd accepts
#                                      (TrustedUserCAKeys); authorized_keys still works
#   SSHEXEC_SSHD_CONFIG=<lines>        sshd_config lines that win over the image's,
#                                      e.g. "MaxStartups 2<newline>MaxSessions 2"
#   SSHEXEC_REGEN_HOSTKEYS=1           new host keys at every start (a "changed host key")
#   SSHEXEC_WORKER_NO_DOCKER=1         remove the docker CLI (a "docker missing" worker)
set -eu

mkdir -p /run/sshd
chmod 0755 /run/sshd

# Keys are made here, not in the image, so every container has its own and
# keeps them across restarts unless asked to change them.
if [ "${SSHEXEC_REGEN_HOSTKEYS:-}" = 1 ]; then
    rm -f /etc/ssh/ssh_host_*
fi
ssh-keygen -A

# The socket's gid is the host's docker group, unknown when the image is
# built. -o because it may be 0 (a daemon started without a docker group).
if [ -S /var/run/docker.sock ]; then
    groupmod -o -g "$(stat -c %g /var/run/docker.sock)" docker
fi

if [ "${SSHEXEC_WORKER_NO_DOCKER:-}" = 1 ]; then
    rm -f /usr/bin/docker
fi

if [ -n "${SSHEXEC_AUTHORIZED_KEY:-}" ]; then
    for user in deploy nodocker deploy-fish deploy-tcsh; do
        entry=$(getent passwd "$user") || continue  # an image without that user
        home=$(printf '%s\n' "$entry" | cut -d: -f6)
        install -d -m 0700 -o "$user" -g "$user" "$home/.ssh"
        printf '%s\n' "$SSHEXEC_AUTHORIZED_KEY" >"$home/.ssh/authorized_keys"
        chown "$user:$user" "$home/.ssh/authorized_keys"
        chmod 0600 "$home/.ssh/authorized_keys"
    done
else
    echo "sshexec-worker-start: SSHEXEC_AUTHORIZED_KEY is not set; nobody can log in" >&2
fi

# A Docker socket somewhere else than /var/run/docker.sock (a lab daemon per worker):
#   SSHEXEC_DOCKER_SOCKET=<path>  the socket; the lab mounts its directory, so the new
#                                 socket of a restarted daemon shows up; group docker gets its gid
#   SSHEXEC_DOCKER_SOCKET_LINK=1  /var/run/docker.sock leads to it too (the docker CLI's default);
#                                 without it, only `docker --host` (the inventory's docker_host) does
if [ -n "${SSHEXEC_DOCKER_SOCKET:-}" ]; then
    if [ "${SSHEXEC_DOCKER_SOCKET_LINK:-}" = 1 ]; then
        ln -sfn "$SSHEXEC_DOCKER_SOCKET" /var/run/docker.sock
    fi
    if [ -S "$SSHEXEC_DOCKER_SOCKET" ]; then
        groupmod -o -g "$(stat -L -c %g "$SSHEXEC_DOCKER_SOCKET")" docker
    fi
fi

# Settings from the environment, rewritten at every start. Debian's sshd_config
# includes sshd_config.d/*.conf in name order. sshd keeps the first value of
# most keywords but the last of a few (MaxStartups, checked with sshd -T), so
# the same lines go in a file read before the image's sshexec.conf and in one
# read after it.
first=/etc/ssh/sshd_config.d/00-sshexec-env.conf
last=/etc/ssh/sshd_config.d/zz-sshexec-env.conf
: >"$first"
if [ -n "${SSHEXEC_USER_CA:-}" ]; then
    printf '%s\n' "$SSHEXEC_USER_CA" >/etc/ssh/sshexec-user-ca.pub
    echo "TrustedUserCAKeys /etc/ssh/sshexec-user-ca.pub" >>"$first"
fi
if [ -n "${SSHEXEC_SSHD_CONFIG:-}" ]; then
    printf '%s\n' "$SSHEXEC_SSHD_CONFIG" >>"$first"
fi
cp "$first" "$last"

exec /usr/sbin/sshd -D -e
