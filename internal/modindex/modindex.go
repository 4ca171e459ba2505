// Package modindex is the index of the on-demand kernel module tree of a
// Cocoon guest image: which module files the tree holds, what each
// depends on, the aliases the kernel asks for them by (request_module's
// "net-pf-7", "fs-xfs", "rtnl-link-bridge", "char-major-10-200", ...)
// and the device nodes their drivers answer to.
//
// The image builder writes the index (from each module's modinfo); the
// guest reads it when the kernel asks its modprobe helper for a module.
// The guest treats it as hostile input: Parse bounds every size and
// checks every name, and module names are the only file names the tree
// is read by.
//
// The format is text, one record per line, fields separated by one space:
//
//	cocoon-modules-index 1
//	release 6.1.0-57-cloud-amd64
//	module bridge stp,llc
//	module stp llc
//	module llc -
//	alias rtnl_link_bridge bridge
//	node c 10 200 net/tun tun
//
// A module named n is the file n.ko in the tree's directory.
package modindex

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// Header is the first line of an index.
const Header = "cocoon-modules-index 1"

// FileName is the name of the index file in a module tree.
const FileName = "index"

// Limits on what Parse accepts.
const (
	MaxIndexSize  = 8 << 20  // bytes of the whole index
	MaxModuleSize = 64 << 20 // bytes of one module file (for readers of the tree)
	MaxNameLen    = 55       // the kernel's MODULE_NAME_LEN - 1
	MaxAliasLen   = 256
	MaxModules    = 16384
	MaxAliases    = 1 << 17
	MaxNodes      = 1024
	MaxDepends    = 64 // per module
	maxLineLen    = 4096
)

// Module is a module of the tree.
type Module struct {
	Name    string
	Depends []string // module names, all in the index
}

// Alias maps a pattern (a shell glob, as in modinfo) to a module.
type Alias struct {
	Pattern string // normalized (see Normalize)
	Module  string
}

// Node is a device node a module's driver answers to (modinfo aliases
// "devname:<name>" and "char-major-M-m" or "block-major-M-m"). Creating
// it before the module loads lets opening it load the module, as kmod's
// static nodes do.
type Node struct {
	Type         byte   // 'c' or 'b'
	Major, Minor uint32 // device number
	Name         string // path below /dev
	Module       string
}

// Index is a parsed index.
type Index struct {
	Release string
	Modules map[string]*Module
	Aliases []Alias
	Nodes   []Node
}

// ValidName reports whether s is a canonical module name: 1 to
// MaxNameLen of [a-zA-Z0-9_], so that s+".ko" is a plain file name.
func ValidName(s string) bool {
	if s == "" || len(s) > MaxNameLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_') {
			return false
		}
	}
	return true
}

// ModuleName folds '-' to '_', as the kernel does for module names.
func ModuleName(s string) string { return strings.ReplaceAll(s, "-", "_") }

// Normalize folds '-' to '_' outside bracket expressions, as kmod does to
// aliases and the names it is asked for, so that "net-pf-7" and
// "net_pf_7" are the same request.
func Normalize(s string) string {
	b := []byte(s)
	inBracket := false
	for i, c := range b {
		switch {
		case c == '[':
			inBracket = true
		case c == ']':
			inBracket = false
		case c == '-' && !inBracket:
			b[i] = '_'
		}
	}
	return string(b)
}

// validAliasText reports whether s is printable ASCII without spaces.
func validAliasText(s string, max int) bool {
	if s == "" || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}

// ValidRequest reports whether s can be a name the kernel asks for.
func ValidRequest(s string) bool { return validAliasText(s, MaxAliasLen) }

// ValidAlias reports whether s can be an alias pattern of the index.
func ValidAlias(s string) bool { return validAliasText(s, MaxAliasLen) }

// ValidNodeName reports whether s is a device path below /dev that a node
// record may name: up to three components of [a-zA-Z0-9_.+-], none "."
// or "..".
func ValidNodeName(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	parts := strings.Split(s, "/")
	if len(parts) > 3 {
		return false
	}
	for _, p := range parts {
		if p == "" || p == "." || p == ".." {
			return false
		}
		for i := 0; i < len(p); i++ {
			c := p[i]
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("_.+-", c) >= 0) {
				return false
			}
		}
	}
	return true
}

// Parse parses an index, checking it whole: every name is valid, every
// dependency and alias target is a module of the index, and no limit is
// exceeded.
func Parse(b []byte) (*Index, error) {
	if len(b) > MaxIndexSize {
		return nil, fmt.Errorf("module index: %d bytes, over the limit of %d", len(b), MaxIndexSize)
	}
	ix := &Index{Modules: map[string]*Module{}}
	lineNo := 0
	fail := func(format string, args ...any) error {
		return fmt.Errorf("module index line %d: %s", lineNo, fmt.Sprintf(format, args...))
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 512), maxLineLen)
	for sc.Scan() {
		lineNo++
		line := sc.Text()
		if lineNo == 1 {
			if line != Header {
				return nil, fail("not a module index (want %q)", Header)
			}
			continue
		}
		f := strings.Split(line, " ")
		switch f[0] {
		case "release":
			if len(f) != 2 || !validAliasText(f[1], 128) || ix.Release != "" {
				return nil, fail("bad release record")
			}
			ix.Release = f[1]
		case "module":
			if len(f) != 3 || !ValidName(f[1]) {
				return nil, fail("bad module record")
			}
			if _, dup := ix.Modules[f[1]]; dup {
				return nil, fail("module %s listed twice", f[1])
			}
			if len(ix.Modules) >= MaxModules {
				return nil, fail("more than %d modules", MaxModules)
			}
			m := &Module{Name: f[1]}
			if f[2] != "-" {
				m.Depends = strings.Split(f[2], ",")
				if len(m.Depends) > MaxDepends {
					return nil, fail("module %s: more than %d dependencies", f[1], MaxDepends)
				}
				for _, d := range m.Depends {
					if !ValidName(d) {
						return nil, fail("module %s: bad dependency %q", f[1], d)
					}
				}
			}
			ix.Modules[m.Name] = m
		case "alias":
			if len(f) != 3 || !ValidAlias(f[1]) || !ValidName(f[2]) {
				return nil, fail("bad alias record")
			}
			if len(ix.Aliases) >= MaxAliases {
				return nil, fail("more than %d aliases", MaxAliases)
			}
			ix.Aliases = append(ix.Aliases, Alias{Pattern: Normalize(f[1]), Module: f[2]})
		case "node":
			if len(f) != 6 || (f[1] != "c" && f[1] != "b") || !ValidNodeName(f[4]) || !ValidName(f[5]) {
				return nil, fail("bad node record")
			}
			maj, err1 := strconv.ParseUint(f[2], 10, 12)
			min, err2 := strconv.ParseUint(f[3], 10, 20)
			if err1 != nil || err2 != nil {
				return nil, fail("bad device number")
			}
			if len(ix.Nodes) >= MaxNodes {
				return nil, fail("more than %d nodes", MaxNodes)
			}
			ix.Nodes = append(ix.Nodes, Node{Type: f[1][0], Major: uint32(maj), Minor: uint32(min), Name: f[4], Module: f[5]})
		default:
			return nil, fail("unknown record %.20q", f[0])
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("module index line %d: %w", lineNo+1, err)
	}
	if lineNo == 0 {
		return nil, errors.New("module index: empty")
	}
	if ix.Release == "" {
		return nil, errors.New("module index: no release record")
	}
	for _, m := range ix.Modules {
		for _, d := range m.Depends {
			if _, ok := ix.Modules[d]; !ok {
				return nil, fmt.Errorf("module index: module %s depends on %s, which it does not list", m.Name, d)
			}
		}
	}
	for _, a := range ix.Aliases {
		if _, ok := ix.Modules[a.Module]; !ok {
			return nil, fmt.Errorf("module index: alias %s names module %s, which it does not list", a.Pattern, a.Module)
		}
	}
	for _, n := range ix.Nodes {
		if _, ok := ix.Modules[n.Module]; !ok {
			return nil, fmt.Errorf("module index: node %s names module %s, which it does not list", n.Name, n.Module)
		}
	}
	return ix, nil
}

// Write writes ix in the index format, records sorted, so that equal
// indexes give equal bytes. It checks what Parse checks of each record.
func (ix *Index) Write(w io.Writer) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, "%s\nrelease %s\n", Header, ix.Release)
	names := make([]string, 0, len(ix.Modules))
	for n := range ix.Modules {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		m := ix.Modules[n]
		if !ValidName(n) || m.Name != n {
			return fmt.Errorf("write module index: bad module name %q", n)
		}
		deps := "-"
		if len(m.Depends) > 0 {
			deps = strings.Join(m.Depends, ",")
		}
		fmt.Fprintf(bw, "module %s %s\n", n, deps)
	}
	aliases := slices.Clone(ix.Aliases)
	slices.SortFunc(aliases, func(a, b Alias) int {
		if c := strings.Compare(a.Pattern, b.Pattern); c != 0 {
			return c
		}
		return strings.Compare(a.Module, b.Module)
	})
	for _, a := range slices.Compact(aliases) {
		if !ValidAlias(a.Pattern) {
			return fmt.Errorf("write module index: bad alias %q", a.Pattern)
		}
		fmt.Fprintf(bw, "alias %s %s\n", a.Pattern, a.Module)
	}
	nodes := slices.Clone(ix.Nodes)
	slices.SortFunc(nodes, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	for _, n := range nodes {
		if !ValidNodeName(n.Name) {
			return fmt.Errorf("write module index: bad node name %q", n.Name)
		}
		fmt.Fprintf(bw, "node %c %d %d %s %s\n", n.Type, n.Major, n.Minor, n.Name, n.Module)
	}
	return bw.Flush()
}

// MaxMatches bounds how many modules one request loads (kmod loads every
// module an alias matches).
const MaxMatches = 32

// Resolve returns the modules to load for request, a module name or an
// alias as the kernel asks for it, in load order: each module after its
// dependencies. A module name matches first; otherwise every module with
// a matching alias is loaded. It fails when nothing matches.
func (ix *Index) Resolve(request string) ([]string, error) {
	if !ValidRequest(request) {
		return nil, fmt.Errorf("module request %.64q: invalid", request)
	}
	var roots []string
	if n := ModuleName(request); ix.Modules[n] != nil {
		roots = []string{n}
	} else {
		req := Normalize(request)
		for _, a := range ix.Aliases {
			if !slices.Contains(roots, a.Module) && Match(a.Pattern, req) {
				roots = append(roots, a.Module)
				if len(roots) > MaxMatches {
					return nil, fmt.Errorf("module request %s: matches more than %d modules", request, MaxMatches)
				}
			}
		}
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("module request %s: %w", request, ErrNotFound)
	}
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var order []string
	var visit func(n string, depth int) error
	visit = func(n string, depth int) error {
		switch state[n] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("module request %s: dependency cycle through %s", request, n)
		}
		m := ix.Modules[n]
		if m == nil {
			return fmt.Errorf("module request %s: module %s is not in the index", request, n)
		}
		if depth > len(ix.Modules) {
			return fmt.Errorf("module request %s: dependency chain too deep", request)
		}
		state[n] = visiting
		deps := slices.Clone(m.Depends)
		slices.Sort(deps)
		for _, d := range deps {
			if err := visit(d, depth+1); err != nil {
				return err
			}
		}
		state[n] = done
		order = append(order, n)
		return nil
	}
	for _, r := range roots {
		if err := visit(r, 0); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// ErrNotFound is returned by Resolve when no module matches.
var ErrNotFound = errors.New("no such module")

// Match reports whether s matches the shell glob pattern: '*' matches any
// run of bytes, '?' one byte, "[...]" a set ("[!...]" or "[^...]"
// negated, "a-z" ranges); '/' is not special. It runs in O(len(pattern) *
// len(s)) time.
func Match(pattern, s string) bool {
	p, i := 0, 0
	starP, starI := -1, 0
	for i < len(s) {
		if p < len(pattern) {
			switch c := pattern[p]; c {
			case '*':
				starP, starI = p, i
				p++
				continue
			case '?':
				p++
				i++
				continue
			case '[':
				if ok, next, valid := matchClass(pattern, p, s[i]); valid {
					if ok {
						p, i = next, i+1
						continue
					}
				} else if s[i] == '[' { // unterminated: a literal '['
					p++
					i++
					continue
				}
			default:
				if c == s[i] {
					p++
					i++
					continue
				}
			}
		}
		if starP < 0 {
			return false
		}
		starI++
		p, i = starP+1, starI
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// matchClass matches c against the bracket expression at pattern[p]
// ('['). It returns whether c matched, the index after the expression,
// and whether the expression is terminated.
func matchClass(pattern string, p int, c byte) (matched bool, next int, valid bool) {
	j := p + 1
	negate := false
	if j < len(pattern) && (pattern[j] == '!' || pattern[j] == '^') {
		negate = true
		j++
	}
	first := true
	for j < len(pattern) {
		if pattern[j] == ']' && !first {
			return matched != negate, j + 1, true
		}
		first = false
		lo := pattern[j]
		hi := lo
		if j+2 < len(pattern) && pattern[j+1] == '-' && pattern[j+2] != ']' {
			hi = pattern[j+2]
			j += 3
		} else {
			j++
		}
		if lo <= c && c <= hi {
			matched = true
		}
	}
	return false, 0, false
}

// Add adds module name with its dependencies and the aliases of its
// modinfo. An alias "devname:<path>" together with "char-major-M-m" or
// "block-major-M-m" becomes a node record, as depmod's modules.devname;
// aliases that cannot be recorded (too long, or with spaces) are left out.
func (ix *Index) Add(name string, depends, aliases []string) error {
	if !ValidName(name) {
		return fmt.Errorf("module index: bad module name %q", name)
	}
	if ix.Modules == nil {
		ix.Modules = map[string]*Module{}
	}
	if _, dup := ix.Modules[name]; dup {
		return fmt.Errorf("module index: module %s added twice", name)
	}
	for _, d := range depends {
		if !ValidName(d) {
			return fmt.Errorf("module index: module %s: bad dependency %q", name, d)
		}
	}
	ix.Modules[name] = &Module{Name: name, Depends: slices.Clone(depends)}
	var devname string
	var typ byte
	var major, minor uint64
	for _, a := range aliases {
		if v, ok := strings.CutPrefix(a, "devname:"); ok {
			devname = v
			continue
		}
		for _, k := range []struct {
			prefix string
			typ    byte
		}{{"char-major-", 'c'}, {"block-major-", 'b'}} {
			if rest, ok := strings.CutPrefix(a, k.prefix); ok {
				maj, min, ok := strings.Cut(rest, "-")
				m1, err1 := strconv.ParseUint(maj, 10, 12)
				m2, err2 := strconv.ParseUint(min, 10, 20)
				if ok && err1 == nil && err2 == nil {
					typ, major, minor = k.typ, m1, m2
				}
			}
		}
		if ValidAlias(a) {
			ix.Aliases = append(ix.Aliases, Alias{Pattern: Normalize(a), Module: name})
		}
	}
	if devname != "" && typ != 0 && ValidNodeName(devname) {
		ix.Nodes = append(ix.Nodes, Node{Type: typ, Major: uint32(major), Minor: uint32(minor), Name: devname, Module: name})
	}
	return nil
}
