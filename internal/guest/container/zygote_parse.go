package container

// #include <stdlib.h>
// int cocoon_zygote_parse(char *buf, size_t n, char **argv);
import "C"

import "unsafe"

// zygoteParse runs zygote.c's request parser on req, for the tests, which
// check it against zygoteRequest (cgo cannot be used in a test file). ok
// is false for a request the zygote refuses. Nothing else calls it: the
// agent links only cgo's few-byte C stub for it.
func zygoteParse(req []byte) (args []string, ok bool) {
	buf := C.CBytes(req)
	defer C.free(buf)
	argv := (**C.char)(C.calloc(zygoteMaxArgs+1, C.size_t(unsafe.Sizeof((*C.char)(nil)))))
	defer C.free(unsafe.Pointer(argv))
	n := C.cocoon_zygote_parse((*C.char)(buf), C.size_t(len(req)), argv)
	if n < 0 {
		return nil, false
	}
	for _, a := range unsafe.Slice(argv, int(n)+1)[:n] {
		args = append(args, C.GoString(a))
	}
	if unsafe.Slice(argv, int(n)+1)[n] != nil {
		return args, false // argv not ended with NULL: the test fails
	}
	return args, true
}
