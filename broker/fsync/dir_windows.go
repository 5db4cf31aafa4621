package fsync

// Dir is a no-op on Windows: a directory cannot be opened for flushing
// there, and NTFS journals its entries itself.
func Dir(dir string) error { return nil }
