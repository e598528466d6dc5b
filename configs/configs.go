// Package configs holds geckohook's shipped data files: the default event
// catalog (embedded into the binary) and example configuration files.
package configs

import _ "embed"

// EventsCatalog is the default event catalog, configs/events.yaml.
//
//go:embed events.yaml
var EventsCatalog []byte
