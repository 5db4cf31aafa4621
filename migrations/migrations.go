package migrations

import "embed"

// FS holds every NNNN_name.sql file of this directory, read by the migrator in
// broker/meta.
//
//go:embed *.sql
var FS embed.FS
