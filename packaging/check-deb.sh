#!/usr/bin/env bash
# Checks a built .deb without installing it: unpacks it into a scratch root (with this
# machine's own systemd units beside it, for the targets ours refer to) and runs
# `systemd-analyze verify` on the units as packaged, which must print nothing; then checks
# that the packaged binary runs, that every man page a unit's Documentation= names is in
# the package, and that the completions and the conffiles are there.
#
#   packaging/check-deb.sh target/debian/takeover_*.deb
set -euo pipefail
deb=${1:?usage: check-deb.sh PATH.deb}
command -v systemd-analyze >/dev/null || { echo "check-deb: systemd-analyze is missing: apt-get install systemd" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
dpkg-deb -x "$deb" "$root"
fail() { echo "check-deb: $*" >&2; exit 1; }

units=(takeover.service takeover-witness.service)
for unit in "${units[@]}"; do
  [ -f "$root/usr/lib/systemd/system/$unit" ] || fail "$unit is not in $deb"
done
mkdir -p "$root/usr/lib/systemd/system"
for unit in /usr/lib/systemd/system/*; do
  name=$(basename "$unit")
  [ -e "$root/usr/lib/systemd/system/$name" ] || cp -a "$unit" "$root/usr/lib/systemd/system/"
done
out=$(cd "$root" && systemd-analyze verify --root="$root" --man=no "${units[@]/#/usr/lib/systemd/system/}" 2>&1) \
  || fail "systemd-analyze verify failed: $out"
[ -z "$out" ] || fail "systemd-analyze verify warned: $out"
echo "check-deb: systemd-analyze verify: ${units[*]} clean"

"$root/usr/bin/takeover" --version >/dev/null || fail "the packaged binary does not run"
for page in $(grep -ho 'man:[a-z-]*([0-9])' "${units[@]/#/$root/usr/lib/systemd/system/}" | sed 's/man:\(.*\)(\(.\))/\1.\2/' | sort -u); do
  [ -f "$root/usr/share/man/man1/$page.gz" ] || fail "a unit names man:$page, which the package lacks"
done
for file in usr/share/bash-completion/completions/takeover usr/share/zsh/vendor-completions/_takeover \
  usr/share/fish/vendor_completions.d/takeover.fish usr/share/man/man1/takeover.1.gz etc/default/takeover; do
  [ -s "$root/$file" ] || fail "$file is missing or empty"
done
control=$(mktemp -d)
dpkg-deb -e "$deb" "$control"
grep -qx /etc/default/takeover "$control/conffiles" || fail "/etc/default/takeover is not a conffile"
for script in postinst postrm; do
  [ -x "$control/$script" ] || fail "the package has no executable $script"
  sh -n "$control/$script" || fail "$script is not valid sh"
  ! grep -q '#DEBHELPER#' "$control/$script" || fail "$script still holds #DEBHELPER#"
  ! grep -q 'systemctl.* \(enable\|start\|restart\)' "$control/$script" || fail "$script enables, starts or restarts a unit"
done
rm -rf "$control"
pages=$(find "$root/usr/share/man/man1" -name '*.1.gz' | wc -l)
echo "check-deb: $deb ok ($pages man pages, completions for bash, zsh and fish, $(du -sh "$root/usr/bin/takeover" | cut -f1) binary)"
