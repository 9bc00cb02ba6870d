#!/bin/sh
# Start one p2pshare role under supervisord with the Python that runs supervisord.
#
# supervisord.conf cannot know where p2pshare was installed: a virtualenv that is
# not activated, ~/.local, or the system. The Python that runs supervisord is the
# one whose pip installed it next to p2pshare, so we take that interpreter from
# the parent's command line. P2P_PYTHON overrides the choice.
role="$1"
case "$role" in
    server|announcer|listener|downloader|web|torrent) ;;
    *) echo "run-role.sh: unknown role '$role'" >&2; exit 2 ;;
esac

# Importing the bare package is enough to know it is installed, and costs little.
usable() { [ -n "$1" ] && "$1" -c 'import p2pshare.services' >/dev/null 2>&1; }

py="${P2P_PYTHON:-}"
if [ -z "$py" ] && [ -r "/proc/$PPID/cmdline" ]; then
    parent=$(tr '\0' '\n' < "/proc/$PPID/cmdline" | head -n 1)
    usable "$parent" && py="$parent"
fi
if [ -z "$py" ]; then
    for candidate in python3 python; do
        if usable "$candidate"; then py="$candidate"; break; fi
    done
fi
if [ -z "$py" ]; then
    echo "p2p-$role: no Python with p2pshare installed was found; run the README's install command or set P2P_PYTHON" >&2
    exit 2
fi
# supervisord runs with umask 077, so its logs, socket and pidfile are private; a role
# writes what the user sees (published downloads) as the user's own programs would, with
# the umask of the shell that ran `p2pctl start` (P2P_USER_UMASK). Run by hand without
# it, a role keeps 077. The node's private files have modes of their own either way.
case "${P2P_USER_UMASK:-}" in
    [0-7][0-7][0-7]|[0-7][0-7][0-7][0-7]) umask "$P2P_USER_UMASK" ;;
esac
exec "$py" -m "p2pshare.services.$role"
