package protocol

// ModulesTree is the directory, below the tree the host shares with the
// guest, that holds the guest image's on-demand kernel modules (a
// read-only bind of the image's module tree, absent when the image has
// none). The guest loads from it when its kernel asks for a module.
const ModulesTree = "_modules"

// ModprobeHelper is the path, in the guest's initramfs, of a link to the
// agent binary under which it serves the kernel's module requests (see
// guest/modprobe).
const ModprobeHelper = "/sbin/cocoon-modprobe"
