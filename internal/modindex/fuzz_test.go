package modindex

import (
	"bytes"
	"testing"
)

// FuzzParse feeds arbitrary bytes to the index parser: it must never
// panic, what it accepts must write back and parse to the same index,
// and resolving any request against it must stay inside the index.
func FuzzParse(f *testing.F) {
	f.Add([]byte(sample), "rtnl-link-bridge")
	f.Add([]byte(sample), "nft-chain-2-nat")
	f.Add([]byte(Header+"\nrelease r\nmodule a b\nmodule b a\n"), "a")
	f.Add([]byte(Header+"\nrelease r\nmodule a -\nalias [*?[!a-] a\nnode b 1 2 x/y a\n"), "[")
	f.Add([]byte("release r\n"), "")
	f.Fuzz(func(t *testing.T, b []byte, req string) {
		ix, err := Parse(b)
		if err != nil {
			return
		}
		var w bytes.Buffer
		if err := ix.Write(&w); err != nil {
			t.Fatalf("accepted index does not write: %v", err)
		}
		ix2, err := Parse(w.Bytes())
		if err != nil {
			t.Fatalf("written index does not parse: %v\n%s", err, w.Bytes())
		}
		if len(ix2.Modules) != len(ix.Modules) || ix2.Release != ix.Release {
			t.Fatalf("round trip changed the index")
		}
		order, err := ix.Resolve(req)
		if err != nil {
			return
		}
		seen := map[string]bool{}
		for _, n := range order {
			m := ix.Modules[n]
			if m == nil || !ValidName(n) || seen[n] {
				t.Fatalf("resolve %q: bad order %v", req, order)
			}
			for _, d := range m.Depends {
				if !seen[d] {
					t.Fatalf("resolve %q: %s before its dependency %s", req, n, d)
				}
			}
			seen[n] = true
		}
	})
}
