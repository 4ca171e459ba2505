package protocol

import (
	"fmt"
	"strings"
)

// maxInterfaceName is the kernel's IFNAMSIZ less its terminating NUL.
const maxInterfaceName = 15

// ValidInterfaceName checks name as the name of a network interface, as
// the host asks for it and as the guest reports it: 1 to 15 printable
// ASCII characters but '/' and ':' (the kernel's rule, narrowed to text).
func ValidInterfaceName(name string) error {
	if name == "" || len(name) > maxInterfaceName || name == "." || name == ".." ||
		strings.ContainsFunc(name, func(r rune) bool { return r <= ' ' || r > '~' || r == '/' || r == ':' }) {
		return fmt.Errorf("bad interface name %q", name)
	}
	return nil
}
