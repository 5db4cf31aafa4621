// Package fsync makes directory entries durable. It is the one copy of
// the directory fsync that the broker's file layer (broker/internal/vfs),
// the bus signing key (push) and backups (cmd/postbus) all need after they
// create, rename or remove a file: without it, a crash can lose the entry
// even though the file's data was synced.
package fsync
