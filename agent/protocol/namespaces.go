package protocol

// NamespaceFile is the name of the file in /proc/<pid>/ns of the OCI
// namespace type typ ("network" is "net", "mount" is "mnt"), and whether
// typ is a namespace type at all.
func NamespaceFile(typ string) (string, bool) {
	switch typ {
	case "pid", "ipc", "uts", "user", "cgroup", "time":
		return typ, true
	case "network":
		return "net", true
	case "mount":
		return "mnt", true
	}
	return "", false
}
