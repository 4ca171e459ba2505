package persist

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// FuzzStore saves under an arbitrary key and loads arbitrary bytes: a key
// is accepted only if its files stay in the store's directory, Load never
// panics, and what it decodes saves and loads back the same.
func FuzzStore(f *testing.F) {
	f.Add("sandbox-1", []byte(`{"Name": "a", "Count": 3}`))
	f.Add("a.b_c-d", []byte(`{"Name": 1}`))
	f.Add("../escape", []byte(`null`))
	f.Add("a..b", []byte(`[1, "x", {"y": [true, null, 1e300]}]`))
	f.Add(".hidden", []byte(`{"Count": 1e400}`))
	f.Add("raw", []byte(`{"n": 1e700, "s": "\u00e9"}`))
	f.Add("x/y", []byte("\xff"))
	f.Add(strings.Repeat("k", 129), []byte(`{}`))
	f.Fuzz(func(t *testing.T, key string, data []byte) {
		dir := t.TempDir()
		s, err := New(dir)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Save(key, doc{"n", 1}); err != nil {
			if p, perr := s.path(key, ".json"); perr == nil {
				t.Fatalf("Save(%q) refused a valid key (%s): %v", key, p, err)
			}
			return
		}
		for _, ext := range []string{".json", ".lock"} {
			p, err := s.path(key, ext)
			if err != nil || filepath.Dir(p) != dir || filepath.Base(p) != key+ext {
				t.Fatalf("key %q: file %q outside %s (%v)", key, p, dir, err)
			}
		}
		if keys, err := s.List(); err != nil || !slices.Equal(keys, []string{key}) {
			t.Fatalf("List after Save(%q) = %q, %v", key, keys, err)
		}

		p, _ := s.path(key, ".json")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		for _, v := range []any{new(doc), new(any), new(map[string]json.RawMessage)} {
			if err := s.Load(key, v); err != nil {
				continue
			}
			if err := s.Save(key, v); err != nil {
				t.Fatalf("Save of what Load gave (%#v): %v", v, err)
			}
			back := reflect.New(reflect.TypeOf(v).Elem()).Interface()
			if err := s.Load(key, back); err != nil {
				t.Fatalf("Load of what Save wrote: %v", err)
			}
			if !reflect.DeepEqual(normalize(t, v), normalize(t, back)) {
				t.Fatalf("round trip: %#v became %#v", v, back)
			}
			if err := os.WriteFile(p, data, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.Delete(key); err != nil {
			t.Fatal(err)
		}
		if keys, _ := s.List(); len(keys) != 0 {
			t.Fatalf("List after Delete = %q", keys)
		}
	})
}

// normalize decodes v's JSON into an any (numbers as json.Number), so that raw messages that differ
// only in spacing compare equal.
func normalize(t *testing.T, v any) any {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber() // a raw message may hold a number no float64 holds
	var out any
	if err := dec.Decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}
