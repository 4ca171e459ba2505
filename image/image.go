// Package image builds and locates Cocoon guest images: a Debian cloud
// kernel, uncompressed so that QEMU can boot it directly through its PVH
// entry point, and an initramfs holding the guest agent as /init together
// with the kernel modules the guest needs.
//
// Images live in content-addressed directories under
// <data dir>/images/<id>/, where the id is derived from every input of the
// build; <data dir>/images/current is a symbolic link to the image built
// last. Build does nothing when an image for the same inputs exists.
package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/layout"
	"github.com/cocoon-runtime/cocoon/internal/modindex"
)

// Defaults for BuildOptions.
const (
	DefaultKernelPackage = "linux-image-cloud-amd64"
	DefaultAgentName     = "cocoon-agent"
)

// Names of the files in an image directory.
const (
	ManifestFile  = "manifest.json"
	VmlinuxFile   = "vmlinux"
	VmlinuzFile   = "vmlinuz"
	InitramfsFile = "initramfs.cpio"
	// ModulesDir holds the on-demand module tree: <name>.ko files and
	// their index (modindex.FileName), which the guest loads from when its
	// kernel asks for a module.
	ModulesDir = "modules"
)

// FormatVersion is the version of the image layout and build procedure.
// Changing it changes every image id, so that images are rebuilt.
const FormatVersion = 2

// BuildOptions configure Build. The zero value builds the default image.
type BuildOptions struct {
	// DataDir is the directory holding images and the package cache.
	// Default: layout.DataDir.
	DataDir string
	// AgentPath is the statically linked guest agent to install as /init.
	// Default: DefaultAgentName in the directory of the running executable.
	AgentPath string
	// KernelDeb is a local kernel package file to use instead of
	// downloading KernelPackage with apt.
	KernelDeb string
	// KernelPackage is the kernel package or metapackage to download.
	// Default: DefaultKernelPackage.
	KernelPackage string
	// Modules are the names of the kernel modules to load at boot; their
	// dependencies are added. Default: DefaultModules().
	Modules []string
	// OnDemandModules are path.Match patterns of module paths below the
	// kernel package's lib/modules/<release>/kernel/ for the on-demand
	// tree; their dependencies are added. Default: DefaultOnDemandModules();
	// an empty, non-nil list builds no tree.
	OnDemandModules []string
	// Progress, if not nil, is called with messages about the progress of
	// the build.
	Progress func(format string, args ...any)
}

// Image is a built guest image.
type Image struct {
	ID            string   `json:"id"`             // first 16 hex digits of the content key
	Dir           string   `json:"dir"`            // directory holding the image files
	Kernel        string   `json:"kernel"`         // uncompressed ELF kernel (vmlinux) for qemu -kernel
	KernelBzImage string   `json:"kernel_bzimage"` // compressed kernel (bzImage) as shipped
	Initrd        string   `json:"initrd"`         // uncompressed newc initramfs
	KernelRelease string   `json:"kernel_release"` // e.g. "6.1.0-56-cloud-amd64"
	KernelPackage string   `json:"kernel_package"`
	KernelVersion string   `json:"kernel_version"` // Debian package version
	Modules       []string `json:"modules"`        // module names in load order
	// ModulesDir is the on-demand module tree, "" when the image has none.
	ModulesDir  string    `json:"modules_dir,omitempty"`
	AgentSHA256 string    `json:"agent_sha256"`
	Built       time.Time `json:"built"`
}

// manifest is the content of an image's manifest.json.
type manifest struct {
	Format          int            `json:"format"`
	Key             string         `json:"key"`
	KernelPackage   string         `json:"kernel_package"`
	KernelVersion   string         `json:"kernel_version"`
	KernelRelease   string         `json:"kernel_release"`
	KernelDebSHA256 string         `json:"kernel_deb_sha256"`
	AgentSHA256     string         `json:"agent_sha256"`
	ModuleRoots     []string       `json:"module_roots"`
	Modules         []string       `json:"modules"`
	OnDemandRoots   []string       `json:"on_demand_roots"`
	OnDemand        []string       `json:"on_demand_modules"`
	Files           []manifestFile `json:"files"`
	Built           time.Time      `json:"built"`
	BuildSeconds    float64        `json:"build_seconds"`
}

type manifestFile struct {
	Name   string `json:"name"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// cacheKey returns the content key of an image: a SHA-256 digest over
// everything that determines its files.
func cacheKey(debSHA256, agentSHA256 string, roots, onDemand []string) string {
	h := sha256.New()
	fmt.Fprintf(h, "cocoon guest image format %d\n", FormatVersion)
	fmt.Fprintf(h, "kernel package sha256 %s\n", debSHA256)
	fmt.Fprintf(h, "agent sha256 %s\n", agentSHA256)
	fmt.Fprintf(h, "modules %s\n", strings.Join(roots, ","))
	fmt.Fprintf(h, "on-demand modules %s\n", strings.Join(onDemand, ","))
	return hex.EncodeToString(h.Sum(nil))
}

// imageID returns the directory name of the image with key.
func imageID(key string) string { return key[:16] }

// normalizeModules returns roots with canonical module names, checking
// that each is a plausible module name.
func normalizeModules(roots []string) ([]string, error) {
	if len(roots) == 0 {
		return nil, errors.New("no kernel modules given")
	}
	out := make([]string, 0, len(roots))
	for _, r := range roots {
		n := moduleName(r)
		if n == "" || strings.ContainsAny(n, ",/ \t\n\x00") {
			return nil, fmt.Errorf("invalid kernel module name %q", r)
		}
		out = append(out, n)
	}
	return out, nil
}

// Build builds the guest image described by opts, unless an image built
// from the same inputs exists, and points <DataDir>/images/current at it.
// The inputs are the kernel package, the agent binary and the list of
// module roots.
func Build(ctx context.Context, opts BuildOptions) (*Image, error) {
	start := time.Now()
	progress := opts.Progress
	if progress == nil {
		progress = func(string, ...any) {}
	}
	dataDir := opts.DataDir
	if dataDir == "" {
		dataDir = layout.DataDir
	}
	dataDir, err := filepath.Abs(dataDir)
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	roots := opts.Modules
	if roots == nil {
		roots = DefaultModules()
	}
	roots, err = normalizeModules(roots)
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	onDemand := opts.OnDemandModules
	if onDemand == nil {
		onDemand = DefaultOnDemandModules()
	}
	for _, p := range onDemand {
		if _, err := path.Match(p, ""); err != nil || p == "" || strings.ContainsAny(p, ", \t\n") {
			return nil, fmt.Errorf("build image: invalid on-demand module pattern %q", p)
		}
	}
	agentPath := opts.AgentPath
	if agentPath == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("build image: locate agent: %w", err)
		}
		agentPath = filepath.Join(filepath.Dir(exe), DefaultAgentName)
	}

	imagesDir := filepath.Join(dataDir, "images")
	if err := os.MkdirAll(imagesDir, 0o755); err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	unlock, err := lockDir(ctx, imagesDir, progress)
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	defer unlock()

	agent, agentMachine, err := readAgent(agentPath)
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	agentSum := sha256.Sum256(agent)
	agentSHA := hex.EncodeToString(agentSum[:])

	var deb *debPackage
	if opts.KernelDeb != "" {
		sum, err := sha256File(opts.KernelDeb)
		if err != nil {
			return nil, fmt.Errorf("build image: kernel package: %w", err)
		}
		deb = &debPackage{Path: opts.KernelDeb, SHA256: sum}
		progress("using kernel package %s", opts.KernelDeb)
	} else {
		pkg := opts.KernelPackage
		if pkg == "" {
			pkg = DefaultKernelPackage
		}
		progress("resolving kernel package %s", pkg)
		a := &apt{progress: progress}
		fields, err := a.resolve(ctx, pkg)
		if err != nil {
			return nil, fmt.Errorf("build image: %w", err)
		}
		deb, err = a.fetch(ctx, filepath.Join(dataDir, "cache", "debs"), fields)
		if err != nil {
			return nil, fmt.Errorf("build image: %w", err)
		}
	}

	key := cacheKey(deb.SHA256, agentSHA, roots, onDemand)
	id := imageID(key)
	dir := filepath.Join(imagesDir, id)
	if m, err := loadManifest(dir); err == nil && m.Key == key {
		if err := setCurrent(imagesDir, id); err != nil {
			return nil, fmt.Errorf("build image: %w", err)
		}
		progress("image %s is up to date", id)
		return m.image(dir), nil
	}

	removeStale(imagesDir)
	tmp, err := os.MkdirTemp(imagesDir, ".build-"+id+"-")
	if err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	defer os.RemoveAll(tmp) // no-op after the rename
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, fmt.Errorf("build image: %w", err)
	}
	m, err := buildInto(ctx, tmp, deb, agent, agentMachine, roots, onDemand, progress)
	if err != nil {
		return nil, fmt.Errorf("build image %s: %w", id, err)
	}
	m.Key = key
	m.AgentSHA256 = agentSHA
	m.Built = time.Now().UTC().Truncate(time.Second)
	m.BuildSeconds = time.Since(start).Round(time.Millisecond).Seconds()
	if err := writeManifest(tmp, m); err != nil {
		return nil, fmt.Errorf("build image %s: %w", id, err)
	}
	if err := syncDir(tmp); err != nil {
		return nil, fmt.Errorf("build image %s: %w", id, err)
	}
	// An existing directory for this key has no valid manifest: it is
	// debris of an interrupted or older build.
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("build image %s: remove invalid image: %w", id, err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return nil, fmt.Errorf("build image %s: %w", id, err)
	}
	if err := syncDir(imagesDir); err != nil {
		return nil, fmt.Errorf("build image %s: %w", id, err)
	}
	if err := setCurrent(imagesDir, id); err != nil {
		return nil, fmt.Errorf("build image %s: %w", id, err)
	}
	progress("image %s ready in %.1fs", id, time.Since(start).Seconds())
	return m.image(dir), nil
}

// buildInto writes the image files into dir and returns the manifest
// without the fields that Build fills in.
func buildInto(ctx context.Context, dir string, deb *debPackage, agent []byte, agentMachine elf.Machine, roots, onDemand []string, progress func(string, ...any)) (*manifest, error) {
	pkg, version, err := debFields(ctx, deb.Path)
	if err != nil {
		return nil, err
	}
	progress("extracting kernel from %s %s", pkg, version)
	kf, err := extractKernel(ctx, deb.Path, roots, onDemand)
	if err != nil {
		return nil, err
	}
	names := make([]string, len(kf.Modules))
	for i, m := range kf.Modules {
		names[i] = m.Name
	}
	progress("resolving modules: %d (%s)", len(names), strings.Join(names, " "))

	if err := writeFileFunc(filepath.Join(dir, VmlinuzFile), func(w io.Writer) error {
		_, err := w.Write(kf.Vmlinuz)
		return err
	}); err != nil {
		return nil, err
	}
	payload, err := locatePayload(kf.Vmlinuz)
	if err != nil {
		return nil, fmt.Errorf("decompress kernel %s: %w", kf.Release, err)
	}
	if size := appendedSize(payload); size > 0 {
		progress("decompressing vmlinux (%.1f MB)", float64(size)/1e6)
	} else {
		progress("decompressing vmlinux")
	}
	vmlinux := filepath.Join(dir, VmlinuxFile)
	if err := writeFileFunc(vmlinux, func(w io.Writer) error {
		_, err := decompressPayload(ctx, w, payload)
		return err
	}); err != nil {
		return nil, err
	}
	kernelMachine, _, err := checkVmlinux(vmlinux)
	if err != nil {
		return nil, err
	}
	if kernelMachine != agentMachine {
		return nil, fmt.Errorf("agent is built for %v, kernel for %v", agentMachine, kernelMachine)
	}

	initrd := filepath.Join(dir, InitramfsFile)
	var initrdSize int64
	for _, m := range kf.Modules {
		initrdSize += int64(len(m.Data))
	}
	progress("writing initramfs (%.1f MB)", float64(initrdSize+int64(len(agent)))/1e6)
	if err := writeFileFunc(initrd, func(w io.Writer) error {
		_, err := writeInitramfs(w, agent, kf.Release, kf.Modules)
		return err
	}); err != nil {
		return nil, err
	}

	m := &manifest{
		Format:          FormatVersion,
		KernelPackage:   pkg,
		KernelVersion:   version,
		KernelRelease:   kf.Release,
		KernelDebSHA256: deb.SHA256,
		ModuleRoots:     roots,
		Modules:         names,
		OnDemandRoots:   onDemand,
	}
	files := []string{VmlinuxFile, VmlinuzFile, InitramfsFile}
	if kf.Index != nil {
		size, err := writeModuleTree(filepath.Join(dir, ModulesDir), kf)
		if err != nil {
			return nil, err
		}
		for _, f := range kf.OnDemand {
			m.OnDemand = append(m.OnDemand, f.Name)
		}
		progress("wrote %d on-demand modules (%.1f MB)", len(kf.OnDemand), float64(size)/1e6)
		files = append(files, path.Join(ModulesDir, modindex.FileName))
	}
	for _, name := range files {
		p := filepath.Join(dir, name)
		fi, err := os.Stat(p)
		if err != nil {
			return nil, err
		}
		sum, err := sha256File(p)
		if err != nil {
			return nil, err
		}
		m.Files = append(m.Files, manifestFile{Name: name, Size: fi.Size(), SHA256: sum})
	}
	return m, nil
}

// readAgent reads the agent binary and checks that it is a statically
// linked ELF executable.
func readAgent(name string) ([]byte, elf.Machine, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return nil, 0, fmt.Errorf("read agent: %w", err)
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, 0, fmt.Errorf("read agent %s: %w", name, err)
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return nil, 0, fmt.Errorf("read agent %s: not an executable (%v)", name, f.Type)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return nil, 0, fmt.Errorf("read agent %s: dynamically linked; build it statically (CGO_ENABLED=0)", name)
		}
	}
	return b, f.Machine, nil
}

// Load reads the image in dir from its manifest and checks that its files
// are present.
func Load(dir string) (*Image, error) {
	m, err := loadManifest(dir)
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("load image %s: %w", dir, err)
	}
	return m.image(abs), nil
}

// loadManifest reads and validates the manifest of the image in dir.
func loadManifest(dir string) (*manifest, error) {
	b, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return nil, fmt.Errorf("load image: %w", err)
	}
	m := &manifest{}
	if err := json.Unmarshal(b, m); err != nil {
		return nil, fmt.Errorf("load image %s: parse %s: %w", dir, ManifestFile, err)
	}
	if m.Format != FormatVersion {
		return nil, fmt.Errorf("load image %s: format %d, want %d: run `cocoon image build`", dir, m.Format, FormatVersion)
	}
	if len(m.Key) != sha256.Size*2 || filepath.Base(dir) != imageID(m.Key) {
		return nil, fmt.Errorf("load image %s: manifest key %q does not match the directory", dir, m.Key)
	}
	have := map[string]int64{}
	for _, f := range m.Files {
		have[f.Name] = f.Size
	}
	required := []string{VmlinuxFile, VmlinuzFile, InitramfsFile}
	if len(m.OnDemand) > 0 {
		required = append(required, path.Join(ModulesDir, modindex.FileName))
	}
	for _, name := range required {
		size, ok := have[name]
		if !ok {
			return nil, fmt.Errorf("load image %s: manifest lists no %s", dir, name)
		}
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			return nil, fmt.Errorf("load image: %w", err)
		}
		if fi.Size() != size {
			return nil, fmt.Errorf("load image %s: %s is %d bytes, manifest says %d", dir, name, fi.Size(), size)
		}
	}
	return m, nil
}

func (m *manifest) image(dir string) *Image {
	var modulesDir string
	if len(m.OnDemand) > 0 {
		modulesDir = filepath.Join(dir, ModulesDir)
	}
	return &Image{
		ID:            imageID(m.Key),
		Dir:           dir,
		Kernel:        filepath.Join(dir, VmlinuxFile),
		KernelBzImage: filepath.Join(dir, VmlinuzFile),
		Initrd:        filepath.Join(dir, InitramfsFile),
		KernelRelease: m.KernelRelease,
		KernelPackage: m.KernelPackage,
		KernelVersion: m.KernelVersion,
		Modules:       m.Modules,
		ModulesDir:    modulesDir,
		AgentSHA256:   m.AgentSHA256,
		Built:         m.Built,
	}
}

func writeManifest(dir string, m *manifest) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("write manifest: %w", err)
	}
	b = append(b, '\n')
	return writeFileFunc(filepath.Join(dir, ManifestFile), func(w io.Writer) error {
		_, err := w.Write(b)
		return err
	})
}

// ModuleTree returns the on-demand module tree of the image whose
// initramfs is initrd, or "" when initrd is not an image's or the image
// has no tree.
func ModuleTree(initrd string) string {
	abs, err := filepath.Abs(initrd)
	if err != nil {
		return ""
	}
	img, err := Load(filepath.Dir(abs))
	if err != nil || img.Initrd != abs {
		return ""
	}
	return img.ModulesDir
}

// OrCurrent returns kernel and initrd, each one left empty replaced by
// the current image's under dataDir: how every caller that boots a VM
// picks its guest.
func OrCurrent(dataDir, kernel, initrd string) (string, string, error) {
	if kernel != "" && initrd != "" {
		return kernel, initrd, nil
	}
	img, err := Current(dataDir)
	if err != nil {
		return "", "", err
	}
	if kernel == "" {
		kernel = img.Kernel
	}
	if initrd == "" {
		initrd = img.Initrd
	}
	return kernel, initrd, nil
}

// Current returns the image that <dataDir>/images/current points to. The
// error wraps fs.ErrNotExist when no image has been built.
func Current(dataDir string) (*Image, error) {
	link := filepath.Join(dataDir, "images", "current")
	target, err := os.Readlink(link)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("no guest image in %s (run `cocoon image build`): %w", filepath.Join(dataDir, "images"), err)
	}
	if err != nil {
		return nil, fmt.Errorf("locate current image: %w", err)
	}
	if !filepath.IsAbs(target) {
		target = filepath.Join(filepath.Dir(link), target)
	}
	img, err := Load(target)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("current guest image is incomplete (run `cocoon image build`): %w", err)
	}
	return img, err
}

// setCurrent atomically points <imagesDir>/current at image id.
func setCurrent(imagesDir, id string) error {
	link := filepath.Join(imagesDir, "current")
	if target, err := os.Readlink(link); err == nil && target == id {
		return nil
	}
	// Build holds the lock on imagesDir, so the temporary name is free
	// for us to use.
	tmp := filepath.Join(imagesDir, ".current.tmp")
	if err := os.Remove(tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("set current image: %w", err)
	}
	if err := os.Symlink(id, tmp); err != nil {
		return fmt.Errorf("set current image: %w", err)
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("set current image: %w", err)
	}
	if err := syncDir(imagesDir); err != nil {
		return fmt.Errorf("set current image: %w", err)
	}
	return nil
}

// removeStale removes the leftovers of interrupted builds. Build holds the
// lock on imagesDir, so no other build is using them.
func removeStale(imagesDir string) {
	stale, _ := filepath.Glob(filepath.Join(imagesDir, ".build-*"))
	for _, s := range stale {
		os.RemoveAll(s)
	}
}

// lockDir takes an exclusive lock on dir, serializing builds, and returns
// a function that releases it.
func lockDir(ctx context.Context, dir string, progress func(string, ...any)) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	waiting := false
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, syscall.EINTR) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", dir, err)
		}
		if !waiting {
			progress("waiting for another image build to finish")
			waiting = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", dir, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// writeFileFunc creates file name with mode 0644, fills it by calling
// write, and syncs it to disk.
func writeFileFunc(name string, write func(w io.Writer) error) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(name), err)
	}
	err = f.Chmod(0o644) // whatever the umask
	if err == nil {
		err = write(f)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", filepath.Base(name), err)
	}
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// ctxReader makes reads fail once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (r *ctxReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	return r.r.Read(p)
}
