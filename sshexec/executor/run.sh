# sshexec executor: the command of every execution container.
# It needs only /bin/sh (dash, bash or busybox ash). Usage:
#   /bin/sh EXECUTOR_DIR/run.sh STEP_DIR OWNER_UID [TMPFS]
# (OWNER_UID: the SSH user's uid, who must be able to remove what the step wrote.
# TMPFS: a writable tmpfs mounted for this container alone (GO's --tmpfs): the
# variables go there and are left to the mount, which goes with the container.)
# stdin: "sshexec 1", the step's settings and variables, "end"; then it stays
# open, and its end means the operator is gone: the step is stopped.
sx_S=$1
sx_owner=${2-}
sx_tmpfs=${3-}
sx_X=${0%/*}
sx_die() { printf 'sshexec executor: %s\n' "$*" >&2; exit 125; }

IFS= read -r sx_line || sx_die "no input from sshexec"
[ "$sx_line" = "sshexec 1" ] || sx_die "unexpected input from sshexec"

umask 077
sx_base=${sx_tmpfs:-/run/sshexec}
[ -d "$sx_base" ] && [ -w "$sx_base" ] || sx_base=${TMPDIR:-/tmp} sx_tmpfs=
SSHEXEC_VARS=$sx_base/vars.$$
sx_n=0
until mkdir "$SSHEXEC_VARS" 2>/dev/null; do
  # A name taken by an executor that was killed (outside a container's tmpfs): the next one.
  sx_n=$((sx_n + 1))
  [ "$sx_n" -lt 50 ] || sx_die "cannot create a directory for the variables in $sx_base"
  SSHEXEC_VARS=$sx_base/vars.$$.$sx_n
done
# The variables, secrets among them, go with the executor, whatever ends it: with
# the container's own tmpfs, unmounted when it ends (no rm on every step's way out).
[ -n "$sx_tmpfs" ] || trap 'rm -rf "$SSHEXEC_VARS"' EXIT

# `command` takes export's special-builtin power to end the shell away: a name this
# shell holds read-only (UID, EUID, PPID... under bash as sh) is skipped, not fatal.
sx_export() {
  sx_val=$(printf "$sx_enc"; printf x)
  command export "$sx_name=${sx_val%x}" 2>/dev/null || sx_skipped="$sx_skipped $sx_name"
}

sx_syntax=sh sx_skipped= sx_allow=" "
while IFS= read -r sx_line; do
  case $sx_line in
    end) break ;;
    "nonce "*) SSHEXEC_NONCE=${sx_line#nonce } ;;
    "syntax "*) sx_syntax=${sx_line#syntax } ;;
    "run "*) SSHEXEC_RUN_ID=${sx_line#run }; export SSHEXEC_RUN_ID ;;
    "step "*) SSHEXEC_STEP=${sx_line#step }; export SSHEXEC_STEP ;;
    "worker "*) SSHEXEC_WORKER=${sx_line#worker }; export SSHEXEC_WORKER ;;
    "allow "*)
      # A loader name whose value is the runbook's own (its loader_variables:), never one from outside.
      sx_name=${sx_line#allow }
      case $sx_name in ""|[0-9]*|*[!A-Za-z0-9_]*) sx_die "bad allow line from sshexec" ;; esac
      sx_allow="$sx_allow$sx_name "
      ;;
    "var "*)
      sx_rest=${sx_line#var }
      sx_name=${sx_rest%% *}
      sx_enc=${sx_rest#* }
      case $sx_name in ""|*/*|.*) sx_die "bad variable name from sshexec" ;; esac
      # sx_enc holds only [A-Za-z0-9_./:=+,@] and \ooo escapes: printf decodes it, nothing else can.
      printf "$sx_enc" > "$SSHEXEC_VARS/$sx_name" || sx_die "cannot store a variable"
      case $sx_name in
        *[!A-Za-z0-9_]* | [0-9]* | IFS | PATH | HOME | PWD | OLDPWD | SSHEXEC_* | sx_*) ;;
        PYTHONDONTWRITEBYTECODE | PYTHONFAULTHANDLER | PYTHONHASHSEED | PYTHONIOENCODING | \
        PYTHONNOUSERSITE | PYTHONSAFEPATH | PYTHONUNBUFFERED | PYTHONUTF8) sx_export ;;
        # Loader names change what code an interpreter, the shell, the linker or git loads: the
        # list of sshexec/config/variables.py (tests/unit/test_outside_variables.py compares them).
        BASH_ENV | ENV | SHELLOPTS | BASHOPTS | PS4 | LD_* | GCONV_PATH | PYTHON* | \
        NODE_OPTIONS | NODE_PATH | NODE_REPL_EXTERNAL_MODULE | PERL5LIB | PERL5OPT | PERLLIB | PERL5DB | \
        RUBYOPT | RUBYLIB | GEM_HOME | GEM_PATH | BUNDLE_GEMFILE | \
        JAVA_TOOL_OPTIONS | _JAVA_OPTIONS | JDK_JAVA_OPTIONS | CLASSPATH | LUA_INIT* | LUA_PATH* | LUA_CPATH* | \
        PHPRC | PHP_INI_SCAN_DIR | TCLLIBPATH | R_PROFILE* | R_ENVIRON* | R_LIBS* | \
        DOTNET_STARTUP_HOOKS | DOTNET_ADDITIONAL_DEPS | CORECLR_PROFILER* | \
        OPENSSL_CONF | OPENSSL_ENGINES | OPENSSL_MODULES | GIT_*)
          case $sx_allow in *" $sx_name "*) sx_export ;; esac ;;
        *) sx_export ;;
      esac
      ;;
  esac
done
[ -z "$sx_skipped" ] || printf 'sshexec: not exported, read-only in this shell:%s (get_sshexec_variable reads them)\n' "$sx_skipped" >&2
unset sx_line sx_rest sx_name sx_enc sx_val sx_skipped sx_allow
[ -n "$SSHEXEC_NONCE" ] || sx_die "no nonce from sshexec"
export SSHEXEC_NONCE SSHEXEC_VARS
export SSHEXEC_CONTROL="$sx_S/ctl" SSHEXEC_HELPERS="$sx_X/helpers.sh"
umask 022

sx_emit() { printf '##sshexec[%s] %s\n' "$SSHEXEC_NONCE" "$*"; }
sx_missing() {
  sx_emit missing "$1"
  printf 'sshexec: this step needs %s, which is not in the image: use an image that has it, or change script.syntax\n' "$1" >&2
  exit 127
}

cd "$sx_S/files" || sx_die "no working directory $sx_S/files"

# Let the SSH user remove what the container's user created.
# The effective uid (as `id -u`) from /proc by a builtin: no `id` process on every step's way out.
sx_uid() {
  sx_u=
  while read -r sx_k _ sx_u _; do
    case $sx_k in Uid:) break ;; esac
    sx_u=
  done </proc/self/status 2>/dev/null
  [ -n "$sx_u" ] || sx_u=$(id -u 2>/dev/null)
}
sx_open() {
  sx_uid
  if [ "$sx_owner" != "$sx_u" ]; then
    chmod -R a+rwX "$sx_S/files" 2>/dev/null
  fi
}

sx_pid=
sx_stop() {
  [ -n "$sx_pid" ] && kill -TERM "$sx_pid" 2>/dev/null
  sx_open
  exit "${1:-143}"
}
trap 'sx_stop 143' TERM
trap 'sx_stop 130' INT
trap 'sx_stop 129' HUP

# The end of stdin means sshexec is gone (cancelled, or the connection was lost).
exec 3<&0
( while IFS= read -r _ <&3; do :; done; kill -HUP $$ 2>/dev/null ) &
sx_watch=$!
exec 3<&-

case $sx_syntax in
  bash) command -v bash >/dev/null 2>&1 || sx_missing bash ;;
  sh) ;;
  python) sx_py=$(command -v python3 2>/dev/null || command -v python 2>/dev/null) || sx_missing python3 ;;
  *) sx_die "unknown script syntax $sx_syntax" ;;
esac

# Before this line, a non-zero exit is docker's or the executor's; after it, the script's (outcome.py).
sx_emit started >&2

case $sx_syntax in
  bash)
    bash -c '. "$1"; sx_script=$2; set --; . "$sx_script"' sshexec "$sx_X/helpers.sh" "$sx_S/script" </dev/null &
    ;;
  sh)
    /bin/sh -c '. "$1"; sx_script=$2; set --; . "$sx_script"' sshexec "$sx_X/helpers.sh" "$sx_S/script" </dev/null &
    ;;
  python)
    # A PYTHONPATH here is the image's, or the runbook's own (loader_variables:): one from outside is never exported.
    PYTHONPATH="$sx_X${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 "$sx_py" "$sx_S/script" </dev/null &
    ;;
esac
sx_pid=$!
while :; do
  wait "$sx_pid"
  sx_rc=$?
  # wait returns >128 when a trapped signal interrupted it; the trap exits.
  kill -0 "$sx_pid" 2>/dev/null || break
done
kill "$sx_watch" 2>/dev/null
sx_open
exit "$sx_rc"
