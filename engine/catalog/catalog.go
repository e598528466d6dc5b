// Package catalog owns the event catalog: the set of event names geckohook
// accepts and delivers, and the API resource path each one maps to, used to
// build an event's resource_url when the producer gives none.
package catalog

import (
	"fmt"
	"os"
	"regexp"
	"sort"

	"gopkg.in/yaml.v3"

	"github.com/geckohook/geckohook/configs"
)

// Catalog maps event names to API resource paths. It is immutable once built
// and safe for concurrent use.
type Catalog struct {
	paths map[string]string
	canon map[string]string // name -> the same name, one shared copy
	names []string
}

var (
	eventName    = regexp.MustCompile(`^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$`)
	resourcePath = regexp.MustCompile(`^[a-z0-9_]+(/[a-z0-9_]+)*$`)
)

// Default returns the catalog shipped in configs/events.yaml.
func Default() *Catalog {
	c, err := Parse(configs.EventsCatalog)
	if err != nil {
		// The embedded file is part of the build and covered by tests.
		panic(fmt.Sprintf("embedded event catalog is invalid: %v", err))
	}
	return c
}

// Load reads a catalog file; an empty path means the default catalog.
func Load(path string) (*Catalog, error) {
	if path == "" {
		return Default(), nil
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read event catalog: %w", err)
	}
	c, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("cannot load event catalog %s: %w", path, err)
	}
	return c, nil
}

// Parse reads a YAML mapping of event name to resource path.
func Parse(data []byte) (*Catalog, error) {
	var m map[string]string
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("cannot parse event catalog: %w", err)
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("event catalog lists no events")
	}
	c := &Catalog{paths: make(map[string]string, len(m)), canon: make(map[string]string, len(m))}
	for name, path := range m {
		if !eventName.MatchString(name) {
			return nil, fmt.Errorf("event name %q is not of the form resource.action", name)
		}
		if !resourcePath.MatchString(path) {
			return nil, fmt.Errorf("event %q: resource path %q must be lower-case path segments", name, path)
		}
		c.paths[name] = path
		c.canon[name] = name
		c.names = append(c.names, name)
	}
	sort.Strings(c.names)
	return c, nil
}

// ResourcePath returns the API resource path of an event and whether the
// event is in the catalog. Lookups with a []byte converted in the call
// (c.ResourcePath(string(b))) do not allocate.
func (c *Catalog) ResourcePath(event string) (string, bool) {
	p, ok := c.paths[event]
	return p, ok
}

// Canonical returns the catalog's own copy of an event name given as bytes,
// so decoders can keep the name without allocating.
func (c *Catalog) Canonical(event []byte) (string, bool) {
	n, ok := c.canon[string(event)]
	return n, ok
}

// Names lists the catalog's event names in sorted order.
func (c *Catalog) Names() []string { return append([]string(nil), c.names...) }
