package image

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"path"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/cocoon-runtime/cocoon/internal/modindex"
)

// kernelFiles is what Build takes from a kernel package.
type kernelFiles struct {
	Release string
	Vmlinuz []byte
	Modules []moduleFile // in load order
	// OnDemand are the modules of the on-demand tree, sorted by name, and
	// Index is its index.
	OnDemand []moduleFile
	Index    *modindex.Index
}

// errStopStream ends streamDeb early without an error.
var errStopStream = errors.New("stop reading package")

// streamDeb runs "dpkg-deb --fsys-tarfile" on deb and calls fn for each
// regular file in the package's data archive, with the file's path
// (without a leading "./") and contents. fn may return errStopStream to
// stop reading.
func streamDeb(ctx context.Context, deb string, fn func(name string, hdr *tar.Header, r io.Reader) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--fsys-tarfile", deb)
	// dpkg-deb decompresses in child processes that share its output
	// pipes: run it in its own process group and stop the whole group
	// when the archive is not read to the end.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("read package %s: %w", deb, err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("read package %s: %w", deb, err)
	}
	walkErr := walkTar(ctx, bufio.NewReaderSize(out, 1<<20), fn)
	if walkErr == nil {
		// Read the padding after the tar end marker, so that dpkg-deb can
		// finish writing and exit.
		_, walkErr = io.Copy(io.Discard, out)
	} else {
		// Stop dpkg-deb rather than read the rest of the archive.
		cancel()
		out.Close()
	}
	waitErr := cmd.Wait()
	switch {
	case walkErr == errStopStream:
		return nil
	case walkErr != nil:
		if stderr.Len() > 0 {
			return fmt.Errorf("read package %s: %w (dpkg-deb: %s)", deb, walkErr, strings.TrimSpace(stderr.String()))
		}
		return fmt.Errorf("read package %s: %w", deb, walkErr)
	case waitErr != nil:
		return fmt.Errorf("read package %s: dpkg-deb --fsys-tarfile: %w: %s", deb, waitErr, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func walkTar(ctx context.Context, r io.Reader, fn func(name string, hdr *tar.Header, r io.Reader) error) error {
	tr := tar.NewReader(r)
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if hdr.Typeflag != tar.TypeReg {
			continue
		}
		name := strings.TrimPrefix(strings.TrimPrefix(hdr.Name, "./"), "/")
		if err := fn(name, hdr, tr); err != nil {
			return err
		}
	}
}

// modulePathRelease splits a path inside a kernel package of the form
// [usr/]lib/modules/<release>/<rest>. ok is false for other paths.
func modulePathRelease(name string) (release, rest string, ok bool) {
	name = strings.TrimPrefix(name, "usr/")
	after, found := strings.CutPrefix(name, "lib/modules/")
	if !found {
		return "", "", false
	}
	release, rest, ok = strings.Cut(after, "/")
	return release, rest, ok && release != "" && rest != ""
}

// maxModuleSize bounds the size of one kernel module read into memory.
const maxModuleSize = 64 << 20

// extractKernel reads kernel package deb and returns its bzImage, the
// modules roots need with their dependencies, in load order, and the
// on-demand tree: every module whose path below the package's "kernel/"
// directory matches one of the onDemand patterns (path.Match), with its
// dependencies, and their index. It reads the package once, keeping only
// the modules known to be needed so far, and a second time only for
// dependencies it had passed before it knew they were needed.
func extractKernel(ctx context.Context, deb string, roots, onDemand []string) (*kernelFiles, error) {
	kf := &kernelFiles{}
	index := map[string]*moduleInfo{}
	data := map[string][]byte{}
	builtin := map[string]bool{}
	want := map[string]bool{}
	for _, r := range roots {
		want[moduleName(r)] = true
	}
	var onDemandRoots []string
	var releases []string
	setRelease := func(r string) {
		if !slices.Contains(releases, r) {
			releases = append(releases, r)
		}
	}
	var buf bytes.Buffer
	err := streamDeb(ctx, deb, func(name string, hdr *tar.Header, r io.Reader) error {
		if rel, ok := strings.CutPrefix(name, "boot/vmlinuz-"); ok {
			if kf.Vmlinuz != nil {
				return fmt.Errorf("more than one kernel (%s and %s)", kf.Release, rel)
			}
			b, err := readAllLimit(r, hdr.Size, maxVmlinuxSize)
			if err != nil {
				return fmt.Errorf("read %s: %w", name, err)
			}
			kf.Vmlinuz, kf.Release = b, rel
			setRelease(rel)
			return nil
		}
		release, rest, ok := modulePathRelease(name)
		if !ok {
			return nil
		}
		setRelease(release)
		if rest == "modules.builtin" {
			b, err := readAllLimit(r, hdr.Size, maxModuleSize)
			if err != nil {
				return fmt.Errorf("read %s: %w", name, err)
			}
			for _, line := range strings.Split(string(b), "\n") {
				if n, _, ok := moduleNameFromPath(strings.TrimSpace(line)); ok {
					builtin[n] = true
				}
			}
			return nil
		}
		modName, compressed, ok := moduleNameFromPath(rest)
		if !ok {
			return nil
		}
		m := &moduleInfo{Name: modName, Path: name, Compressed: compressed}
		if compressed == "" {
			buf.Reset()
			if hdr.Size > maxModuleSize {
				return fmt.Errorf("read %s: larger than %d bytes", name, maxModuleSize)
			}
			if _, err := io.Copy(&buf, r); err != nil {
				return fmt.Errorf("read %s: %w", name, err)
			}
			info, err := parseModinfo(buf.Bytes())
			if info.Name != "" {
				m.Name = info.Name
			}
			m.Depends, m.Vermagic, m.Aliases = info.Depends, info.Vermagic, info.Aliases
			if err != nil {
				// Only an error if the module is needed.
				m.Invalid = err.Error()
			}
		}
		if _, dup := index[m.Name]; dup {
			return nil // keep the first; packages do not ship duplicates
		}
		index[m.Name] = m
		if matchesAny(onDemand, strings.TrimPrefix(rest, "kernel/")) {
			onDemandRoots = append(onDemandRoots, m.Name)
			want[m.Name] = true
		}
		if want[m.Name] && compressed == "" && m.Invalid == "" {
			data[m.Name] = bytes.Clone(buf.Bytes())
			for _, d := range m.Depends {
				want[d] = true
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if kf.Vmlinuz == nil {
		return nil, fmt.Errorf("read package %s: no boot/vmlinuz-* kernel", deb)
	}
	if len(releases) != 1 {
		return nil, fmt.Errorf("read package %s: files for more than one kernel release: %s", deb, strings.Join(releases, ", "))
	}
	for n := range builtin {
		if _, ok := index[n]; !ok {
			index[n] = &moduleInfo{Name: n, Builtin: true}
		}
	}

	order, err := resolveModules(roots, index)
	if err != nil {
		return nil, fmt.Errorf("read package %s: %w", deb, err)
	}
	slices.Sort(onDemandRoots)
	tree, err := resolveModules(onDemandRoots, index)
	if err != nil {
		return nil, fmt.Errorf("read package %s: on-demand modules: %w", deb, err)
	}
	missing := map[string]string{} // path -> module name
	for _, m := range slices.Concat(order, tree) {
		if _, ok := data[m.Name]; !ok {
			missing[m.Path] = m.Name
		}
	}
	if len(missing) > 0 {
		err := streamDeb(ctx, deb, func(name string, hdr *tar.Header, r io.Reader) error {
			mod, ok := missing[name]
			if !ok {
				return nil
			}
			b, err := readAllLimit(r, hdr.Size, maxModuleSize)
			if err != nil {
				return fmt.Errorf("read %s: %w", name, err)
			}
			data[mod] = b
			delete(missing, name)
			if len(missing) == 0 {
				return errStopStream
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		if len(missing) > 0 {
			return nil, fmt.Errorf("read package %s: modules vanished on second read", deb)
		}
	}
	for _, m := range slices.Concat(order, tree) {
		if v, _, _ := strings.Cut(m.Vermagic, " "); v != kf.Release {
			return nil, fmt.Errorf("read package %s: module %s is built for kernel %q, not %s", deb, m.Name, v, kf.Release)
		}
	}
	for _, m := range order {
		kf.Modules = append(kf.Modules, moduleFile{Name: m.Name, Data: data[m.Name]})
	}
	if len(tree) > 0 {
		kf.Index = &modindex.Index{Release: kf.Release}
		slices.SortFunc(tree, func(a, b *moduleInfo) int { return strings.Compare(a.Name, b.Name) })
		for _, m := range tree {
			// Built-in dependencies are not files of the tree.
			deps := slices.DeleteFunc(slices.Clone(m.Depends), func(d string) bool { return index[d].Builtin })
			if err := kf.Index.Add(m.Name, deps, m.Aliases); err != nil {
				return nil, fmt.Errorf("read package %s: %w", deb, err)
			}
			kf.OnDemand = append(kf.OnDemand, moduleFile{Name: m.Name, Data: data[m.Name]})
		}
	}
	return kf, nil
}

// matchesAny reports whether name matches one of the path.Match patterns.
func matchesAny(patterns []string, name string) bool {
	for _, p := range patterns {
		if ok, _ := path.Match(p, name); ok {
			return true
		}
	}
	return false
}

// readAllLimit reads the size bytes of a file from r, failing if size is
// larger than limit.
func readAllLimit(r io.Reader, size, limit int64) ([]byte, error) {
	if size < 0 || size > limit {
		return nil, fmt.Errorf("size %d out of range (limit %d)", size, limit)
	}
	b := make([]byte, size)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	return b, nil
}
