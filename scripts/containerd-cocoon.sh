#!/usr/bin/env bash
# Run Cocoon from containerd: the recipe docs/containerd.md describes.
#
#   containerd-cocoon.sh config [options]   print a containerd config.toml registering Cocoon
#   containerd-cocoon.sh images [options]   import the local busybox and pause images
#
# Run with no arguments or with -h for the options.
set -euo pipefail

prog=$(basename "$0")
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
	cat <<EOF
usage:
  $prog config [--root DIR] [--state DIR] [--address SOCKET] [--cocoon-config FILE]
               [--cni-conf-dir DIR] [--cni-bin-dir DIR] [--sandbox-image NAME] [--log-level LEVEL]
               [--blockfile-scratch FILE] [--cdi-spec-dir DIR]
      Print to standard output a containerd config.toml (version = 2, read by
      containerd 1.6, 1.7 and 2.x) that registers Cocoon's shim as runtime
      "cocoon" (runtime_type io.containerd.cocoon.v2) and as the CRI runtime
      handler "cocoon", keeps runc as handler "runc" (the default), and uses
      the local pause image as sandbox image.
      Defaults: --root /var/lib/containerd, --state /run/containerd,
      --address STATE/containerd.sock, --cni-conf-dir ROOT/cni/net.d,
      --cni-bin-dir /usr/lib/cni, --sandbox-image cocoon.local/pause:latest.
      Without --cocoon-config the shim gets no ConfigPath option and uses its
      own default configuration.
      With --blockfile-scratch (containerd 1.7 or 2.x), the blockfile
      snapshotter is enabled with FILE, an empty ext4 image, as the template
      of every snapshot (its size is each container's rootfs size), and a
      second handler "cocoon-blockfile" runs Cocoon with it: the VM gets each
      rootfs as a virtio-blk disk instead of over virtio-fs. Images must be
      unpacked for it (ctr images import --snapshotter blockfile).
      With --cdi-spec-dir (containerd 1.7 or 2.x), the CRI injects the CDI
      devices a container asks for from the specs in DIR.
      The CNI configuration directory is created and, unless it already holds
      a network configuration, given a loopback-only one (10-cocoon-lo.conflist).

  $prog images [--address SOCKET] [--namespace NS]... [--cocoon PATH]
      Build cocoon.local/busybox:latest and cocoon.local/pause:latest with
      'cocoon image oci' and import them with ctr into each namespace
      (default: k8s.io, the CRI's, and default). The cocoon binary is --cocoon,
      \$COCOON, else the first of cocoon on PATH and $repo/bin/cocoon that has
      'image oci', else 'go run ./cmd/cocoon' in $repo.
      Default --address: /run/containerd/containerd.sock.
EOF
}

die() {
	echo "$prog: $*" >&2
	exit 2
}

# toml_string quotes $1 as a TOML basic string.
toml_string() {
	local s=${1//\\/\\\\}
	s=${s//\"/\\\"}
	printf '"%s"' "$s"
}

# need_arg OPTION COUNT: an option's value is missing.
need_arg() { [[ $2 -ge 2 ]] || die "$1 needs a value"; }

cmd_config() {
	local root=/var/lib/containerd state=/run/containerd address="" cocoon_config=""
	local cni_conf_dir="" cni_bin_dir=/usr/lib/cni sandbox_image=cocoon.local/pause:latest log_level=info
	local blockfile_scratch="" cdi_spec_dir=""
	while [[ $# -gt 0 ]]; do
		case $1 in
		--root) need_arg "$1" $#; root=$2; shift 2 ;;
		--state) need_arg "$1" $#; state=$2; shift 2 ;;
		--address) need_arg "$1" $#; address=$2; shift 2 ;;
		--cocoon-config) need_arg "$1" $#; cocoon_config=$2; shift 2 ;;
		--cni-conf-dir) need_arg "$1" $#; cni_conf_dir=$2; shift 2 ;;
		--cni-bin-dir) need_arg "$1" $#; cni_bin_dir=$2; shift 2 ;;
		--sandbox-image) need_arg "$1" $#; sandbox_image=$2; shift 2 ;;
		--log-level) need_arg "$1" $#; log_level=$2; shift 2 ;;
		--blockfile-scratch) need_arg "$1" $#; blockfile_scratch=$2; shift 2 ;;
		--cdi-spec-dir) need_arg "$1" $#; cdi_spec_dir=$2; shift 2 ;;
		-h | --help) usage; exit 0 ;;
		*) die "config: unknown argument $1 (see $prog -h)" ;;
		esac
	done
	[[ -n $address ]] || address=$state/containerd.sock
	[[ -n $cni_conf_dir ]] || cni_conf_dir=$root/cni/net.d
	for p in "$root" "$state" "$address" "$cni_conf_dir" ${blockfile_scratch:+"$blockfile_scratch"} ${cdi_spec_dir:+"$cdi_spec_dir"}; do
		[[ $p == /* ]] || die "config: $p is not an absolute path"
	done
	# Unix socket paths are limited to 107 bytes.
	[[ ${#address} -le 100 ]] || die "config: socket path $address is too long (at most 100 bytes)"

	write_cni_conf "$cni_conf_dir"

	local options="" blockfile="" blockfile_runtime="" cdi=""
	if [[ -n $cdi_spec_dir ]]; then
		cdi="
    # CDI devices (the CRI's CDIDevices, device plugins) from these specs.
    enable_cdi = true
    cdi_spec_dirs = [$(toml_string "$cdi_spec_dir")]"
	fi
	if [[ -n $cocoon_config ]]; then
		options="
          [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.cocoon.options]
            ConfigPath = $(toml_string "$cocoon_config")"
	fi
	if [[ -n $blockfile_scratch ]]; then
		blockfile="
  # Snapshots as ext4 image files, copies of the scratch image.
  [plugins.\"io.containerd.snapshotter.v1.blockfile\"]
    scratch_file = $(toml_string "$blockfile_scratch")
    fs_type = \"ext4\"
"
		blockfile_runtime="

        # Cocoon with block snapshots: each rootfs reaches the VM as a disk.
        [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.cocoon-blockfile]
          runtime_type = \"io.containerd.cocoon.v2\"
          snapshotter = \"blockfile\"
          pod_annotations = [\"io.cocoon.config.*\"]
          container_annotations = [\"io.cocoon.config.*\"]"
		if [[ -n $cocoon_config ]]; then
			blockfile_runtime+="
          [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.cocoon-blockfile.options]
            ConfigPath = $(toml_string "$cocoon_config")"
		fi
	fi
	cat <<EOF
# containerd configuration written by $prog: Cocoon (runtime_type
# io.containerd.cocoon.v2, binary containerd-shim-cocoon-v2 on containerd's
# PATH) as runtime and CRI handler "cocoon", runc as handler "runc".
# Version 2: containerd 1.6 and 1.7 read it as is, 2.x migrates it.
version = 2
root = $(toml_string "$root")
state = $(toml_string "$state")

# Plugins that cannot work on a host without those filesystems, tracing
# collectors or NRI plugins; disabling them keeps containerd's log clean
# and everything it creates under root and state.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
  "io.containerd.nri.v1.nri",
]

[grpc]
  address = $(toml_string "$address")

[ttrpc]
  address = $(toml_string "$address.ttrpc")

[debug]
  level = $(toml_string "$log_level")

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = $(toml_string "$root/opt")
$blockfile
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = $(toml_string "$sandbox_image")
    # Root without CAP_SYS_RESOURCE cannot lower an oom_score_adj: the CRI
    # must keep the scores it asks for no lower than its own.
    restrict_oom_score_adj = true$cdi
    # Pod network namespaces under state, not /run/netns.
    netns_mounts_under_state_dir = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"

    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = $(toml_string "$cni_bin_dir")
      conf_dir = $(toml_string "$cni_conf_dir")
      max_conf_num = 1

    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes]
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
          runtime_type = "io.containerd.runc.v2"
          [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
            # runc's state under containerd's (the default is /run/containerd/runc).
            Root = $(toml_string "$state/runc")

        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cocoon]
          runtime_type = "io.containerd.cocoon.v2"
          # Per-pod overrides reach the shim only if the CRI passes them
          # on; the shim then applies those its config allows.
          pod_annotations = ["io.cocoon.config.*"]
          container_annotations = ["io.cocoon.config.*"]$options$blockfile_runtime
EOF
}

# write_cni_conf DIR: a loopback-only network, unless DIR already has a
# network configuration of its own (which is left alone).
#
# The loopback plugin brings the pod's lo up. containerd's CRI (1.6 to 2.x)
# also insists that the network's result gives the pod's default interface,
# eth0, an address, or RunPodSandbox fails with "failed to find network info
# for sandbox"; a loopback result carries none. The static plugin creates
# nothing: it only reports 127.0.0.1, which CNI results attribute to eth0
# when no interface is named, so the pod's IP is its own loopback address.
# No bridge, veth or non-loopback address exists on the host or in the pod.
write_cni_conf() {
	local dir=$1 ours=10-cocoon-lo.conflist f
	mkdir -p "$dir"
	for f in "$dir"/*.conf "$dir"/*.conflist "$dir"/*.json; do
		if [[ -e $f && $(basename "$f") != "$ours" ]]; then
			echo "$prog: $dir already holds $(basename "$f"); not adding $ours" >&2
			return 0
		fi
	done
	printf '%s\n' '{"cniVersion":"1.0.0","name":"cocoon-lo","plugins":[{"type":"loopback"},{"type":"static","ipam":{"addresses":[{"address":"127.0.0.1/8"}]}}]}' >"$dir/$ours.tmp"
	mv "$dir/$ours.tmp" "$dir/$ours"
}

# has_image_oci COCOON: whether that cocoon binary can write the images.
has_image_oci() { "$1" image oci --help 2>/dev/null | grep -q -e '--pause'; }

cmd_images() {
	local address=/run/containerd/containerd.sock cocoon=${COCOON:-} namespaces=()
	while [[ $# -gt 0 ]]; do
		case $1 in
		--address) need_arg "$1" $#; address=$2; shift 2 ;;
		--namespace | -n) need_arg "$1" $#; namespaces+=("$2"); shift 2 ;;
		--cocoon) need_arg "$1" $#; cocoon=$2; shift 2 ;;
		-h | --help) usage; exit 0 ;;
		*) die "images: unknown argument $1 (see $prog -h)" ;;
		esac
	done
	[[ ${#namespaces[@]} -gt 0 ]] || namespaces=(k8s.io default)
	command -v ctr >/dev/null || die "images: ctr not found (apt-get install containerd)"

	# The first cocoon that has 'image oci' (an older build may not).
	local oci=() c
	if [[ -n $cocoon ]]; then
		has_image_oci "$cocoon" || die "images: $cocoon has no 'image oci' command"
		oci=("$cocoon" image oci)
	else
		for c in "$(command -v cocoon || true)" "$repo/bin/cocoon"; do
			if [[ -n $c && -x $c ]] && has_image_oci "$c"; then
				oci=("$c" image oci)
				break
			fi
		done
	fi
	if [[ ${#oci[@]} -eq 0 ]]; then
		command -v go >/dev/null || PATH=$PATH:/usr/local/go/bin
		oci=(go -C "$repo" run ./cmd/cocoon image oci)
	fi

	local tmp
	tmp=$(mktemp -d)
	# shellcheck disable=SC2064 # expand now: tmp is local
	trap "rm -rf '$tmp'" EXIT
	# One archive holding both images (they share their layer).
	"${oci[@]}" --busybox --pause -o "$tmp/images.tar"
	local ns
	for ns in "${namespaces[@]}"; do
		ctr --address "$address" -n "$ns" images import "$tmp/images.tar"
	done
}

case ${1:-} in
config) shift; cmd_config "$@" ;;
images) shift; cmd_images "$@" ;;
-h | --help | help) usage ;;
"") usage >&2; exit 2 ;;
*) die "unknown command $1 (see $prog -h)" ;;
esac
