package image

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// aptArchives is where apt keeps the packages it downloaded; a kernel
// package found there with the right checksum is reused.
const aptArchives = "/var/cache/apt/archives"

// debPackage is a kernel package file on disk.
type debPackage struct {
	Path    string
	Package string // may be empty until read from the file
	Version string
	SHA256  string
}

// parseControl parses the first paragraph of Debian control data, as
// printed by apt-cache show, into its fields. Continuation lines are
// joined to their field with a newline.
func parseControl(text string) map[string]string {
	fields := map[string]string{}
	last := ""
	for _, line := range strings.Split(text, "\n") {
		if strings.TrimSpace(line) == "" {
			if len(fields) > 0 {
				break
			}
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			if last != "" {
				fields[last] += "\n" + strings.TrimSpace(line)
			}
			continue
		}
		key, value, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		last = strings.TrimSpace(key)
		fields[last] = strings.TrimSpace(value)
	}
	return fields
}

// kernelDependency returns the kernel package a metapackage such as
// linux-image-cloud-amd64 depends on, and the version it pins, if any.
// ok is false when depends names no other linux-image package, which means
// self is the kernel package itself.
func kernelDependency(self, depends string) (pkg, version string, ok bool) {
	for _, group := range strings.Split(depends, ",") {
		alt, _, _ := strings.Cut(group, "|")
		alt = strings.TrimSpace(alt)
		name, constraint, _ := strings.Cut(alt, "(")
		name = strings.TrimSpace(name)
		name, _, _ = strings.Cut(name, ":") // drop an architecture qualifier
		if !strings.HasPrefix(name, "linux-image-") || name == self {
			continue
		}
		constraint = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(constraint), ")"))
		if v, ok := strings.CutPrefix(constraint, "="); ok {
			version = strings.TrimSpace(v)
		}
		return name, version, true
	}
	return "", "", false
}

// apt runs apt-cache and apt-get. It runs "apt-get update" at most once,
// when apt-cache does not know a package.
type apt struct {
	progress func(format string, args ...any)
	updated  bool
}

// show returns the fields of the candidate version of package spec
// ("name" or "name=version").
func (a *apt) show(ctx context.Context, spec string) (map[string]string, error) {
	out, err := runOutput(ctx, "", "apt-cache", "show", "--no-all-versions", spec)
	if err != nil && !a.updated {
		a.progress("apt-cache does not know %s: running apt-get update", spec)
		a.updated = true
		if _, uerr := runOutput(ctx, "", "apt-get", "update"); uerr != nil {
			return nil, fmt.Errorf("look up package %s: %w; %w", spec, err, uerr)
		}
		out, err = runOutput(ctx, "", "apt-cache", "show", "--no-all-versions", spec)
	}
	if err != nil {
		return nil, fmt.Errorf("look up package %s: %w", spec, err)
	}
	fields := parseControl(out)
	if fields["Package"] == "" || fields["Version"] == "" {
		return nil, fmt.Errorf("look up package %s: apt-cache show printed no package", spec)
	}
	return fields, nil
}

// resolve follows metapackages from name to the kernel package they
// depend on and returns that package's apt-cache fields.
func (a *apt) resolve(ctx context.Context, name string) (map[string]string, error) {
	spec := name
	for range 4 {
		fields, err := a.show(ctx, spec)
		if err != nil {
			return nil, err
		}
		dep, version, ok := kernelDependency(fields["Package"], fields["Depends"])
		if !ok {
			return fields, nil
		}
		spec = dep
		if version != "" {
			spec = dep + "=" + version
		}
	}
	return nil, fmt.Errorf("resolve kernel package %s: too many levels of metapackages", name)
}

// fetch returns the package file described by fields in cacheDir,
// downloading it with "apt-get download" unless a copy with the expected
// checksum is already there.
func (a *apt) fetch(ctx context.Context, cacheDir string, fields map[string]string) (*debPackage, error) {
	pkg, version, arch := fields["Package"], fields["Version"], fields["Architecture"]
	want := strings.ToLower(fields["SHA256"])
	if arch == "" {
		arch = "amd64"
	}
	// apt-get download names files like this, escaping an epoch's colon.
	file := pkg + "_" + strings.ReplaceAll(version, ":", "%3a") + "_" + arch + ".deb"
	dst := filepath.Join(cacheDir, file)
	deb := &debPackage{Path: dst, Package: pkg, Version: version}

	for _, cand := range []string{dst, filepath.Join(aptArchives, file)} {
		sum, err := sha256File(cand)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("check cached package: %w", err)
		}
		if want != "" && sum != want {
			a.progress("ignoring %s: sha256 %s, want %s", cand, sum, want)
			continue
		}
		if cand != dst {
			if err := copyFile(cand, dst); err != nil {
				return nil, fmt.Errorf("copy cached package: %w", err)
			}
		}
		a.progress("using cached %s", dst)
		deb.SHA256 = sum
		return deb, nil
	}

	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("download %s: %w", pkg, err)
	}
	tmp, err := os.MkdirTemp(cacheDir, ".download-")
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", pkg, err)
	}
	defer os.RemoveAll(tmp)
	a.progress("downloading %s %s", pkg, version)
	// Run as root into a directory user _apt cannot write, apt-get warns
	// that it downloads unsandboxed; the warning is harmless, so output is
	// shown only on failure.
	if _, err := runOutput(ctx, tmp, "apt-get", "download", pkg+"="+version); err != nil {
		return nil, fmt.Errorf("download %s %s: %w", pkg, version, err)
	}
	got, err := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if err != nil || len(got) != 1 {
		return nil, fmt.Errorf("download %s %s: apt-get download left %d package files", pkg, version, len(got))
	}
	sum, err := sha256File(got[0])
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", pkg, err)
	}
	if want != "" && sum != want {
		return nil, fmt.Errorf("download %s %s: sha256 %s does not match the archive's %s", pkg, version, sum, want)
	}
	if err := os.Chmod(got[0], 0o644); err != nil {
		return nil, fmt.Errorf("download %s: %w", pkg, err)
	}
	if err := os.Rename(got[0], dst); err != nil {
		return nil, fmt.Errorf("download %s: %w", pkg, err)
	}
	deb.SHA256 = sum
	return deb, nil
}

// debFields reads the package name and version from a package file.
func debFields(ctx context.Context, deb string) (pkg, version string, err error) {
	out, err := runOutput(ctx, "", "dpkg-deb", "--field", deb, "Package", "Version")
	if err != nil {
		return "", "", fmt.Errorf("read package %s: %w", deb, err)
	}
	f := parseControl(out)
	if f["Package"] == "" {
		return "", "", fmt.Errorf("read package %s: no Package field", deb)
	}
	return f["Package"], f["Version"], nil
}

// runOutput runs a command in dir and returns its standard output. The
// error includes the command's standard error.
func runOutput(ctx context.Context, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		if msg != "" {
			return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, msg)
		}
		return "", fmt.Errorf("%s %s: %w", name, strings.Join(args, " "), err)
	}
	return stdout.String(), nil
}

// sha256File returns the hex SHA-256 digest of a file.
func sha256File(name string) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("hash %s: %w", name, err)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// copyFile copies src to dst through a temporary file beside dst.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.CreateTemp(filepath.Dir(dst), ".copy-")
	if err != nil {
		return err
	}
	defer os.Remove(out.Name())
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Chmod(0o644); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(out.Name(), dst)
}
