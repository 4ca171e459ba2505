package modindex

import (
	"bytes"
	"errors"
	"path"
	"slices"
	"strings"
	"testing"
)

const sample = Header + `
release 6.1.0-57-cloud-amd64
module bridge llc,stp
module llc -
module stp llc
module tun -
module nf_tables nfnetlink,libcrc32c
module nfnetlink -
module libcrc32c -
module nft_chain_nat nf_tables,nf_nat
module nf_nat nf_conntrack
module nf_conntrack libcrc32c
module xfs libcrc32c
alias rtnl_link_bridge bridge
alias net-pf-16-proto-12 nfnetlink
alias nfnetlink-subsys-10 nf_tables
alias nft-chain-2-nat nft_chain_nat
alias nft-chain-10-nat nft_chain_nat
alias fs-xfs xfs
alias char-major-10-200 tun
alias devname:net/tun tun
alias pci:v00001AF4d*sv*sd*bc*sc*i* tun
node c 10 200 net/tun tun
`

func TestParseAndResolve(t *testing.T) {
	ix, err := Parse([]byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	if ix.Release != "6.1.0-57-cloud-amd64" || len(ix.Modules) != 11 || len(ix.Nodes) != 1 {
		t.Fatalf("parsed %+v", ix)
	}
	for _, tc := range []struct {
		req  string
		want []string
	}{
		{"bridge", []string{"llc", "stp", "bridge"}},
		{"rtnl-link-bridge", []string{"llc", "stp", "bridge"}},
		{"nft-chain-2-nat", []string{"libcrc32c", "nf_conntrack", "nf_nat", "nfnetlink", "nf_tables", "nft_chain_nat"}},
		{"nft_chain_10_nat", []string{"libcrc32c", "nf_conntrack", "nf_nat", "nfnetlink", "nf_tables", "nft_chain_nat"}},
		{"net-pf-16-proto-12", []string{"nfnetlink"}},
		{"fs-xfs", []string{"libcrc32c", "xfs"}},
		{"char-major-10-200", []string{"tun"}},
		{"pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", []string{"tun"}},
		{"nf-tables", []string{"libcrc32c", "nfnetlink", "nf_tables"}},
	} {
		got, err := ix.Resolve(tc.req)
		if err != nil {
			t.Errorf("Resolve(%q): %v", tc.req, err)
			continue
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("Resolve(%q) = %v, want %v", tc.req, got, tc.want)
		}
	}
	for _, req := range []string{"fs-ext4", "net-pf-7", "", "a b", "../bridge", strings.Repeat("a", MaxAliasLen+1)} {
		if got, err := ix.Resolve(req); err == nil {
			t.Errorf("Resolve(%q) = %v, want an error", req, got)
		}
	}
	if _, err := ix.Resolve("fs-ext4"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Resolve(fs-ext4): %v, want ErrNotFound", err)
	}
}

func TestWriteParseRoundTrip(t *testing.T) {
	ix, err := Parse([]byte(sample))
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := ix.Write(&b); err != nil {
		t.Fatal(err)
	}
	ix2, err := Parse(b.Bytes())
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	var b2 bytes.Buffer
	if err := ix2.Write(&b2); err != nil {
		t.Fatal(err)
	}
	if b.String() != b2.String() {
		t.Errorf("not stable:\n%s\n---\n%s", b.String(), b2.String())
	}
	if len(ix2.Aliases) != len(ix.Aliases) || len(ix2.Modules) != len(ix.Modules) {
		t.Errorf("lost records")
	}
}

func TestParseRejects(t *testing.T) {
	for name, text := range map[string]string{
		"no header":         "release x\n",
		"no release":        Header + "\nmodule a -\n",
		"unknown dep":       Header + "\nrelease r\nmodule a b\n",
		"alias to nothing":  Header + "\nrelease r\nalias x a\n",
		"node to nothing":   Header + "\nrelease r\nnode c 1 1 x a\n",
		"path in name":      Header + "\nrelease r\nmodule ../a -\n",
		"slash in name":     Header + "\nrelease r\nmodule a/b -\n",
		"dot in name":       Header + "\nrelease r\nmodule a.ko -\n",
		"long name":         Header + "\nrelease r\nmodule " + strings.Repeat("a", MaxNameLen+1) + " -\n",
		"dup module":        Header + "\nrelease r\nmodule a -\nmodule a -\n",
		"node escapes":      Header + "\nrelease r\nmodule a -\nnode c 1 1 ../x a\n",
		"node absolute":     Header + "\nrelease r\nmodule a -\nnode c 1 1 /x a\n",
		"node major":        Header + "\nrelease r\nmodule a -\nnode c 4096 1 x a\n",
		"node type":         Header + "\nrelease r\nmodule a -\nnode p 1 1 x a\n",
		"extra field":       Header + "\nrelease r\nmodule a - x\n",
		"unknown record":    Header + "\nrelease r\nexec /bin/sh\n",
		"two releases":      Header + "\nrelease r\nrelease s\n",
		"control in alias":  Header + "\nrelease r\nmodule a -\nalias x\x01 a\n",
		"empty":             "",
		"long line":         Header + "\nrelease r\nalias " + strings.Repeat("x", maxLineLen) + " a\n",
		"too many deps":     Header + "\nrelease r\nmodule a " + strings.Repeat("b,", MaxDepends) + "b\nmodule b -\n",
		"cycle is accepted": "",
	} {
		if text == "" && name != "empty" {
			continue
		}
		if ix, err := Parse([]byte(text)); err == nil {
			t.Errorf("%s: parsed %+v", name, ix)
		}
	}
	// A cycle parses but does not resolve.
	ix, err := Parse([]byte(Header + "\nrelease r\nmodule a b\nmodule b a\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ix.Resolve("a"); err == nil {
		t.Errorf("cycle resolved to %v", got)
	}
}

func TestMatch(t *testing.T) {
	for _, tc := range []struct {
		p, s string
		want bool
	}{
		{"abc", "abc", true},
		{"abc", "abd", false},
		{"a*", "abc", true},
		{"*c", "abc", true},
		{"a*b*c", "aXbYc", true},
		{"a*b*c", "aXbY", false},
		{"a?c", "abc", true},
		{"a?c", "ac", false},
		{"[ab]x", "bx", true},
		{"[!ab]x", "bx", false},
		{"[^ab]x", "cx", true},
		{"[a-c]", "b", true},
		{"[a-c]", "d", false},
		{"[]]", "]", true},
		{"a[", "a[", true},
		{"devname:net/tun", "devname:net/tun", true},
		{"*", "", true},
		{"", "", true},
		{"", "a", false},
		{"pci:v*d*", "pci:v1d2", true},
	} {
		if got := Match(tc.p, tc.s); got != tc.want {
			t.Errorf("Match(%q, %q) = %v, want %v", tc.p, tc.s, got, tc.want)
		}
		// Agrees with path.Match where that applies (no '/', valid pattern).
		if !strings.Contains(tc.p+tc.s, "/") && !strings.Contains(tc.p, "^") && tc.p != "a[" {
			if pm, err := path.Match(strings.ReplaceAll(tc.p, "[!", "[^"), tc.s); err == nil && pm != tc.want {
				t.Errorf("path.Match(%q, %q) = %v, Match says %v", tc.p, tc.s, pm, tc.want)
			}
		}
	}
}

// Add turns a module's modinfo aliases into alias records and, for a
// devname with its device number, a node record, as depmod does.
func TestAddFromModinfo(t *testing.T) {
	var ix Index
	ix.Release = "6.1.0-57-cloud-amd64"
	if err := ix.Add("tun", nil, []string{"devname:net/tun", "char-major-10-200", "rtnl-link-tun", "bad alias"}); err != nil {
		t.Fatal(err)
	}
	if err := ix.Add("loop", nil, []string{"block-major-7-*", "char-major-10-237", "devname:loop-control"}); err != nil {
		t.Fatal(err)
	}
	if err := ix.Add("bridge", []string{"stp"}, []string{"rtnl-link-bridge"}); err != nil {
		t.Fatal(err)
	}
	if err := ix.Add("stp", nil, nil); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []struct {
		name string
		deps []string
	}{{"tun", nil}, {"a-b", nil}, {"x", []string{"../y"}}} {
		if err := ix.Add(bad.name, bad.deps, nil); err == nil {
			t.Errorf("Add(%q, %q) succeeded", bad.name, bad.deps)
		}
	}
	var b bytes.Buffer
	if err := ix.Write(&b); err != nil {
		t.Fatal(err)
	}
	got, err := Parse(b.Bytes())
	if err != nil {
		t.Fatalf("%v\n%s", err, b.String())
	}
	want := []Node{
		{Type: 'c', Major: 10, Minor: 237, Name: "loop-control", Module: "loop"},
		{Type: 'c', Major: 10, Minor: 200, Name: "net/tun", Module: "tun"},
	}
	if !slices.Equal(got.Nodes, want) {
		t.Errorf("nodes %+v, want %+v", got.Nodes, want)
	}
	for req, mod := range map[string]string{"char-major-10-200": "tun", "block-major-7-3": "loop", "rtnl-link-bridge": "bridge"} {
		order, err := got.Resolve(req)
		if err != nil || order[len(order)-1] != mod {
			t.Errorf("Resolve(%s) = %v, %v; want it to end with %s", req, order, err, mod)
		}
	}
	if _, err := got.Resolve("bad alias"); err == nil {
		t.Error("an alias with a space was recorded")
	}
}
