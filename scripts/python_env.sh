# Sourced by setup.sh, test.sh and demo.sh: sets PY to the Python that sam-edge is installed into.
#
# The base interpreter is $PYTHON, else python3. It is used as is when it runs inside a
# virtualenv, or when pip may install into it. Where it may not (PEP 668: an
# EXTERNALLY-MANAGED marker in its stdlib, as on stock Debian and Ubuntu), or with
# SAM_EDGE_VENV=1, the project virtualenv is used instead: $SAM_EDGE_VENV_DIR, by default
# .venv in the repository root, created from the base interpreter when missing.
# SAM_EDGE_VENV=0 never uses it.

sam_edge_python() {
  # Prints the interpreter to use; with "create", makes the virtualenv first where one is needed.
  local root base venv_dir state
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  base=${PYTHON:-python3}
  venv_dir=${SAM_EDGE_VENV_DIR:-$root/.venv}
  case "${SAM_EDGE_VENV:-auto}" in
    1) state=forced ;;
    0) state=free ;;
    auto)
      state=$("$base" -c 'import os, sys, sysconfig
if sys.prefix != getattr(sys, "base_prefix", sys.prefix):
    print("virtualenv")
elif os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")):
    print("externally-managed")
else:
    print("free")') || { echo "setup: cannot run $base" >&2; return 1; } ;;
    *) echo "setup: SAM_EDGE_VENV must be 0, 1 or unset; got '${SAM_EDGE_VENV}'" >&2; return 2 ;;
  esac
  if [ "$state" = free ] || [ "$state" = virtualenv ]; then
    command -v "$base"
    return 0
  fi
  if [ "${1:-}" = create ] && [ ! -x "$venv_dir/bin/python" ]; then
    echo "setup: $base is $state: creating the project virtualenv $venv_dir" >&2
    "$base" -m venv "$venv_dir" || {
      echo "setup: could not create $venv_dir (on Debian/Ubuntu: apt install python3-venv)" >&2
      return 1
    }
  fi
  echo "$venv_dir/bin/python"
}
