# sshexec helpers, defined before every bash or sh script runs (SPEC §3).

# One printf, so a message is one write; never "$*", which joins with the script's own IFS.
sx_emit() {
  case $# in
    1) printf '##sshexec[%s] %s\n' "$SSHEXEC_NONCE" "$1" ;;
    2) printf '##sshexec[%s] %s %s\n' "$SSHEXEC_NONCE" "$1" "$2" ;;
    *) printf '##sshexec[%s] %s %s %s\n' "$SSHEXEC_NONCE" "$1" "$2" "$3" ;;
  esac
}
# Hex, so that any value (quotes, newlines, markers) travels as plain text.
sx_hex() {
  if [ -z "${1-}" ]; then printf -- '-'; else printf '%s' "${1-}" | od -An -v -tx1 | tr -d ' \n'; fi
}
sx_name_ok() {
  case $1 in
    "" | */* | .* | *[!]A-Za-z0-9_.[-]*) printf '%s: bad variable name %s\n' "${2-}" "${1-}" >&2; return 1 ;;
  esac
}

set_sshexec_variable() {
  if [ "$#" -lt 2 ] || [ "$#" -gt 3 ] || { [ "$#" -eq 3 ] && [ "${3-}" != --sensitive ]; }; then
    echo "usage: set_sshexec_variable NAME VALUE [--sensitive]" >&2; return 2
  fi
  case $1 in
    [A-Za-z_]*) ;;
    *) printf 'set_sshexec_variable: bad variable name %s (letters, digits, _ . -; not first a digit)\n' "${1-}" >&2; return 2 ;;
  esac
  case $1 in *[!A-Za-z0-9_.-]*) printf 'set_sshexec_variable: bad variable name %s\n' "${1-}" >&2; return 2 ;; esac
  sx_s=0; [ "${3-}" = --sensitive ] && sx_s=1
  sx_m="set $(sx_hex "${1-}") $(sx_hex "${2-}") $sx_s"
  sx_emit "$sx_m"
  # On stderr too: output that follows on either stream must find the value already masked.
  [ "$sx_s" = 1 ] && sx_emit "$sx_m" >&2
  printf '%s' "${2-}" > "$SSHEXEC_VARS/$1"
}

get_sshexec_variable() {
  if [ "$#" -ne 1 ]; then echo "usage: get_sshexec_variable NAME" >&2; return 2; fi
  sx_name_ok "${1-}" get_sshexec_variable || return 2
  if [ ! -f "$SSHEXEC_VARS/$1" ]; then
    printf 'get_sshexec_variable: no variable named %s\n' "${1-}" >&2; return 1
  fi
  cat "$SSHEXEC_VARS/$1"
}

new_sshexec_artifact() {
  if [ "$#" -lt 1 ] || [ "$#" -gt 2 ] || [ -z "${1-}" ]; then
    echo "usage: new_sshexec_artifact PATH [NAME]" >&2; return 2
  fi
  case $1 in /*) sx_p=$1 ;; *) sx_p=$PWD/$1 ;; esac
  if [ ! -f "$sx_p" ]; then printf 'new_sshexec_artifact: %s is not a file\n' "${1-}" >&2; return 1; fi
  : > "$SSHEXEC_CONTROL/keep" 2>/dev/null
  sx_emit artifact "$(sx_hex "$sx_p")" "$(sx_hex "${2:-${sx_p##*/}}")"
}

fail_step() {
  sx_emit fail "$(sx_hex "${1:-failed by the script}")"
  exit 1
}
