#!/bin/bash
# The README's set-up on a fresh machine: builds a minimal Debian 12 (bookworm) root with
# debootstrap, copies the project's committed tree into it, and runs the two command blocks of
# README.md's "Two commands" section there, verbatim, one after the other, timing each. Nothing
# else from this machine goes in: what the commands need, tools/install-deps.sh must install.
#
#   sudo tools/fresh_root_check.sh
#
# Needs root, debootstrap (installed with apt-get when missing), util-linux's unshare and network
# access to Debian's mirrors. Exits 0 when both commands pass; otherwise names the command that
# failed, prints the tail of its log and exits 1 (2 for a problem of the check itself).
#
# Environment:
#   FRESH_ROOT_DROP="pkg ..."  remove these packages from the copied tools/install-deps.sh first
#                              (shows that the check catches a missing package)
#   FRESH_ROOT_REV=rev         the commit to copy (default HEAD)
#   FRESH_ROOT_BASE=dir        where the root is made (default $TMPDIR or /tmp)
#   FRESH_ROOT_MIRROR=url      Debian mirror (default http://deb.debian.org/debian)
#   FRESH_ROOT_VERBOSE=1       stream the commands' output too (default: to log files only)
#   FRESH_ROOT_TAIL=N          lines of a failing command's log to print (default 60)
#   FRESH_ROOT_KEEP=1          keep the root afterwards (default: deleted)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
rev=${FRESH_ROOT_REV:-HEAD}
base=${FRESH_ROOT_BASE:-${TMPDIR:-/tmp}}
mirror=${FRESH_ROOT_MIRROR:-http://deb.debian.org/debian}
security_mirror=${mirror%/debian}/debian-security
drop=${FRESH_ROOT_DROP:-}
verbose=${FRESH_ROOT_VERBOSE:-0}
tail_lines=${FRESH_ROOT_TAIL:-60}
keep=${FRESH_ROOT_KEEP:-0}
suite=bookworm
project=/root/ballast   # where a newcomer would have cloned it

say() { echo "fresh-root: $*"; }
die() { echo "fresh-root: $*" >&2; exit 2; }
now() { date +%s; }
mmss() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot and mounts)"
command -v unshare >/dev/null || die "unshare (util-linux) not found"
command -v git >/dev/null || die "git not found (the committed tree is copied with git archive)"
git -C "$repo" rev-parse --verify -q "$rev^{commit}" >/dev/null || die "$rev: not a commit of $repo"
deps_text=$(git -C "$repo" show "$rev:tools/install-deps.sh")
for p in $drop; do
    printf '%s\n' "$deps_text" |
        grep -Eq "(^|[[:space:]\"])$(printf '%s' "$p" | sed 's/[.+]/\\&/g')([[:space:]\"]|$)" ||
        die "FRESH_ROOT_DROP: $p is not in tools/install-deps.sh"
done
if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

mkdir -p "$base"
work=$(mktemp -d "$base/ballast-fresh-root.XXXXXX")
root=$work/root
logs=$work/logs
mkdir -p "$root" "$logs"

# The root's mounts live only in the private mount namespace below, so the host never sees them;
# still, never delete through a mount point.
cleanup() {
    local rc=$?
    if [ "$keep" = 1 ]; then
        say "root kept: $root"
    elif grep -q " $root[/ ]" /proc/self/mountinfo 2>/dev/null; then
        say "something is still mounted under $root; not deleting it" >&2
    else
        rm -rf --one-file-system "$root"
    fi
    say "logs: $logs"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t_all=$(now)
say "commit $(git -C "$repo" rev-parse --short "$rev"), root $root, $(nproc) cores"

# 1. A minimal Debian 12.
t=$(now)
keyring=()
[ -f /usr/share/keyrings/debian-archive-keyring.gpg ] &&
    keyring=(--keyring=/usr/share/keyrings/debian-archive-keyring.gpg)
# (in a mount namespace of its own, so that a failing debootstrap leaves no /proc mounted in the root)
if ! unshare --mount debootstrap "${keyring[@]}" --variant=minbase "$suite" "$root" "$mirror" \
    >"$logs/debootstrap.log" 2>&1; then
    tail -n "$tail_lines" "$logs/debootstrap.log" >&2
    die "debootstrap failed"
fi
t_debootstrap=$(($(now) - t))
say "debootstrap --variant=minbase $suite: $(mmss $t_debootstrap) (Debian $(cat "$root/etc/debian_version"))"

# Apt sources as a fresh Debian 12 has them: bookworm, bookworm-updates, bookworm-security, main.
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security_mirror
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
cp -L /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true

# 2. The committed tree (no build folders, nothing untracked).
mkdir -p "$root$project"
git -C "$repo" archive --format=tar "$rev" | tar -x -C "$root$project"

if [ -n "$drop" ]; then
    deps=$root$project/tools/install-deps.sh
    for p in $drop; do
        re=$(printf '%s' "$p" | sed 's/[.+]/\\&/g')
        sed -i -E ":a; s/(^|[[:space:]\"])$re([[:space:]\"]|$)/\1\2/; ta" "$deps"
    done
    say "dropped from tools/install-deps.sh inside the root: $drop"
fi

# 3. The README's two commands: the first two ```sh blocks under "## Two commands".
mkdir -p "$root/fresh-root"
n=$(awk -v dir="$root/fresh-root" '
    /^## / { in_sec = ($0 ~ /^## Two commands[[:space:]]*$/); in_blk = 0; next }
    in_sec && !in_blk && /^```sh[[:space:]]*$/ { in_blk = 1; n++; next }
    in_sec && in_blk && /^```[[:space:]]*$/ { in_blk = 0; next }
    in_sec && in_blk && n <= 2 { print > (dir "/cmd" n ".sh") }
    END { print n + 0 }' "$root$project/README.md")
[ "$n" -ge 2 ] && [ -s "$root/fresh-root/cmd1.sh" ] && [ -s "$root/fresh-root/cmd2.sh" ] ||
    die "README.md: found $n \`\`\`sh blocks under \"## Two commands\", need 2"

# Runs inside `unshare --mount --pid --fork`: its own /proc, a read-only /sys, a /dev of its own
# (the usual device nodes, a fresh /dev/shm and /dev/pts), a clean environment.
cat >"$work/inner.sh" <<'EOF'
set -u
root=$1 project=$2 logs=$3 verbose=$4
mounted=()
mnt() { mount "$@" && mounted=("${@: -1}" "${mounted[@]}"); }
unmount_all() { for m in "${mounted[@]}"; do umount -l "$m" 2>/dev/null; done; }
trap unmount_all EXIT
mount --make-rprivate / &&
mnt -t proc proc "$root/proc" &&
mnt -t sysfs -o ro sysfs "$root/sys" &&
mnt -t tmpfs -o mode=755,size=16m tmpfs "$root/dev" || exit 2
for d in null zero full random urandom tty; do
    touch "$root/dev/$d" && mnt --bind "/dev/$d" "$root/dev/$d" || exit 2
done
ln -s /proc/self/fd "$root/dev/fd"; ln -s fd/0 "$root/dev/stdin"
ln -s fd/1 "$root/dev/stdout"; ln -s fd/2 "$root/dev/stderr"
mkdir -p "$root/dev/shm" "$root/dev/pts"
mnt -t tmpfs -o mode=1777,nosuid,nodev tmpfs "$root/dev/shm" &&
mnt -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts "$root/dev/pts" || exit 2
ln -s pts/ptmx "$root/dev/ptmx"
failed=0
for i in 1 2; do
    echo "fresh-root: command $i: $(cat "$root/fresh-root/cmd$i.sh")"
    t=$(date +%s)
    run() {
        chroot "$root" /usr/bin/env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash \
            PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 TERM=dumb \
            /bin/sh -c "cd $project && exec /bin/sh -e /fresh-root/cmd$i.sh" </dev/null 2>&1
    }
    if [ "$verbose" = 1 ]; then
        set -o pipefail; run | tee "$logs/cmd$i.log"; rc=$?; set +o pipefail
    else
        run >"$logs/cmd$i.log"; rc=$?
    fi
    s=$(($(date +%s) - t))
    echo "$i $rc $s" >>"$logs/results"
    if [ "$rc" -eq 0 ]; then
        printf 'fresh-root: command %d passed in %dm%02ds\n' "$i" $((s / 60)) $((s % 60))
    else
        failed=1
        printf 'fresh-root: command %d FAILED (exit %d) after %dm%02ds; the last lines of its log:\n' \
            "$i" "$rc" $((s / 60)) $((s % 60))
        tail -n "${TAIL_LINES:-60}" "$logs/cmd$i.log" | sed 's/^/  | /'
    fi
done
exit $failed
EOF

rc=0
TAIL_LINES=$tail_lines unshare --mount --pid --fork --kill-child \
    bash "$work/inner.sh" "$root" "$project" "$logs" "$verbose" || rc=$?

total=$(($(now) - t_all))
if [ "$rc" -eq 0 ]; then
    c1=$(awk '$1 == 1 { print $3 }' "$logs/results")
    c2=$(awk '$1 == 2 { print $3 }' "$logs/results")
    say "PASSED: debootstrap $(mmss $t_debootstrap), command 1 $(mmss "$c1"), command 2 $(mmss "$c2"), all $(mmss $total)"
    exit 0
fi
if [ -f "$logs/results" ]; then
    failed=$(awk '$2 != 0 { printf " %s", $1 }' "$logs/results")
    say "FAILED: README command(s)${failed:- ?} failed in a fresh Debian 12 root (all $(mmss $total))" >&2
else
    say "FAILED: could not set up the root's mounts (exit $rc)" >&2
fi
exit 1
