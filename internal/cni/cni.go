// Package cni runs CNI plugins, with CNI's own libcni, for a pod network
// namespace that Cocoon made itself (`cocoon run --net cni:NAME`, or a
// library caller's SandboxConfig.Network): ADD when the sandbox is made,
// DEL when it goes. The network's configuration is read once, at ADD, and
// kept in the Attachment, so that DEL undoes exactly what ADD did even if
// the file changed or went meanwhile.
package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/containernetworking/cni/libcni"
)

// Defaults, as containerd's CRI and Debian's containernetworking-plugins
// have them.
const (
	DefaultConfDir = "/etc/cni/net.d"
	DefaultIfName  = "eth0"
)

// DefaultBinDirs are where the plugins are looked for: Debian's package
// installs them in /usr/lib/cni, upstream's tarball in /opt/cni/bin.
func DefaultBinDirs() []string { return []string{"/usr/lib/cni", "/opt/cni/bin"} }

// maxConfig bounds the configuration kept in an Attachment.
const maxConfig = 1 << 20

// Network names a CNI network to attach to.
type Network struct {
	// Name is the network's name: the "name" of a .conflist (or .conf)
	// in ConfDir.
	Name    string   `json:"name"`
	ConfDir string   `json:"conf_dir,omitempty"`
	BinDirs []string `json:"bin_dirs,omitempty"`
	// IfName is the interface the plugins make in the namespace.
	IfName string `json:"if_name,omitempty"`
}

// Attachment is one ADD of a network to a namespace: what DEL needs.
type Attachment struct {
	Network
	// ContainerID is the CNI container ID (the sandbox's ID).
	ContainerID string `json:"container_id"`
	NetNS       string `json:"netns"`
	// CacheDir is libcni's result cache.
	CacheDir string `json:"cache_dir"`
	// Config is the network's configuration list as ADD read it.
	Config json.RawMessage `json:"config"`
}

func (n Network) withDefaults() Network {
	if n.ConfDir == "" {
		n.ConfDir = DefaultConfDir
	}
	if len(n.BinDirs) == 0 {
		n.BinDirs = DefaultBinDirs()
	}
	if n.IfName == "" {
		n.IfName = DefaultIfName
	}
	return n
}

// Prepare reads network n's configuration and returns the attachment of
// container id in the namespace at netns, without running any plugin: the
// caller records it before Add, so that a crash in between still leaves a
// record for Del.
func Prepare(ctx context.Context, n Network, id, netns, cacheDir string) (Attachment, error) {
	n = n.withDefaults()
	if n.Name == "" {
		return Attachment{}, errors.New("cni: no network name")
	}
	list, err := libcni.LoadNetworkConf(n.ConfDir, n.Name)
	if err != nil {
		return Attachment{}, fmt.Errorf("cni network %q in %s: %w", n.Name, n.ConfDir, err)
	}
	if len(list.Bytes) > maxConfig {
		return Attachment{}, fmt.Errorf("cni network %q: configuration of %d bytes, over the limit of %d", n.Name, len(list.Bytes), maxConfig)
	}
	// Every plugin must be there and speak the list's version.
	if _, err := libcni.NewCNIConfig(n.BinDirs, nil).ValidateNetworkList(ctx, list); err != nil {
		return Attachment{}, fmt.Errorf("cni network %q: %w", n.Name, err)
	}
	return Attachment{Network: n, ContainerID: id, NetNS: netns, CacheDir: cacheDir, Config: list.Bytes}, nil
}

func (a Attachment) load() (*libcni.CNIConfig, *libcni.NetworkConfigList, *libcni.RuntimeConf, error) {
	list, err := libcni.ConfListFromBytes(a.Config)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("cni network %q: %w", a.Name, err)
	}
	c := libcni.NewCNIConfigWithCacheDir(a.BinDirs, a.CacheDir, nil)
	rc := &libcni.RuntimeConf{ContainerID: a.ContainerID, NetNS: a.NetNS, IfName: a.IfName}
	return c, list, rc, nil
}

// Add runs the network's plugins' ADD. On error it runs DEL, so that
// nothing a plugin made before the failure stays.
func Add(ctx context.Context, a Attachment) error {
	c, list, rc, err := a.load()
	if err != nil {
		return err
	}
	if _, err := c.AddNetworkList(ctx, list, rc); err != nil {
		err = fmt.Errorf("cni network %q: add %s: %w", a.Name, a.NetNS, err)
		if derr := c.DelNetworkList(context.WithoutCancel(ctx), list, rc); derr != nil {
			err = errors.Join(err, fmt.Errorf("undo: %w", derr))
		}
		return err
	}
	return nil
}

// Del runs the plugins' DEL (which CNI requires to succeed for what is
// already gone) and removes the result cache.
func Del(ctx context.Context, a Attachment) error {
	c, list, rc, err := a.load()
	if err != nil {
		return err
	}
	if err := c.DelNetworkList(ctx, list, rc); err != nil {
		return fmt.Errorf("cni network %q: del %s: %w", a.Name, a.NetNS, err)
	}
	if a.CacheDir != "" {
		if err := os.RemoveAll(a.CacheDir); err != nil {
			return fmt.Errorf("cni network %q: %w", a.Name, err)
		}
	}
	return nil
}
