#!/bin/sh
# mmdebstrap customize hook for the blockhost-broker VPS image:
#   customize.sh ROOT DEB IMAGE_DIR
# installs the broker package and the image's own files into ROOT, enables
# what runs at boot, and removes everything that must differ per machine
# (ssh host keys, machine-id, random seed) or per build (logs, caches), so
# that the same package set gives the same tree.
set -eu
root=$1 deb=$2 image_dir=$3

cp "$deb" "$root/tmp/blockhost-broker.deb"
chroot "$root" apt-get install -y --no-install-recommends /tmp/blockhost-broker.deb
rm "$root/tmp/blockhost-broker.deb"

cp -a "$image_dir/files/." "$root/"
rm -f "$root/etc/nftables.d/.keep"
install -m 0644 "$image_dir/README.md" "$root/usr/share/doc/blockhost-broker/IMAGE.md"

echo blockhost-broker > "$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$root/etc/hosts"
# The root file system is made with this label (xtask/src/image.rs).
printf 'LABEL=blockhost-root\t/\text4\terrors=remount-ro\t0\t1\n' > "$root/etc/fstab"
ln -sf ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"

chroot "$root" systemctl enable systemd-networkd.service systemd-resolved.service \
    nftables.service ssh.service blockhost-broker-issue.service \
    blockhost-broker-grub-device.service
# The unit is enabled by the package; it waits for config.toml
# (ConditionPathExists), which setup or cloud-init writes.

# Per machine: made at first boot.
rm -f "$root"/etc/ssh/ssh_host_*
: > "$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root/var/lib/systemd/random-seed"
# Per build: logs, caches, backups of files the build changed.
find "$root/var/log" -type f -delete
rm -rf "$root/var/lib/cloud/"* "$root/var/cache/debconf/"*-old "$root/var/lib/dpkg/"*-old \
    "$root/var/cache/ldconfig/aux-cache" "$root/etc/"*- "$root/var/lib/apt/lists/"*
