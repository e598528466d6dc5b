package catalog

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDefaultCatalogHasTheSeedEvents(t *testing.T) {
	c := Default()
	want := map[string]string{
		"account.update": "accounts", "address.create": "addresses", "address.update": "addresses",
		"company.create": "companies", "company.update": "companies", "contact.create": "contacts",
		"contact.update": "contacts", "document_theme.update": "document_themes",
		"fulfillment.create": "fulfillments", "fulfillment.fulfilled": "fulfillments",
		"fulfillment_return.create": "fulfillment_returns", "invoice.create": "invoices",
		"location.create": "locations", "location.update": "locations", "order.create": "orders",
		"order.finalized": "orders", "order.fulfilled": "orders", "payment.create": "payments",
		"product.create": "products", "procurement.create": "procurements",
		"purchase_order.create": "purchase_orders", "stock_adjustment.create": "stock_adjustments",
		"stock_transfer.create": "stock_transfers", "variant.create": "variants",
		"variant.stock_level_update": "variants", "image.create": "images",
		"fulfillments.create": "fulfillments", "product.update": "products",
	}
	if got := len(c.Names()); got != len(want) {
		t.Fatalf("catalog has %d events, want %d: %v", got, len(want), c.Names())
	}
	for name, path := range want {
		got, ok := c.ResourcePath(name)
		if !ok || got != path {
			t.Errorf("ResourcePath(%q) = %q, %v; want %q, true", name, got, ok, path)
		}
	}
	if _, ok := c.ResourcePath("order.deleted"); ok {
		t.Errorf("order.deleted must not be in the catalog")
	}
}

func TestParseRejectsBadCatalogs(t *testing.T) {
	f := func(data, wantErr string) {
		t.Helper()
		_, err := Parse([]byte(data))
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Errorf("Parse(%q) error = %v, want it to mention %q", data, err, wantErr)
		}
	}
	f("", "no events")
	f("[a, b]", "cannot parse")
	f("Order.Create: orders", "resource.action")
	f("order: orders", "resource.action")
	f("order.create: ../etc", "resource path")
}

func TestLoadExtendsCatalogFromFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "events.yaml")
	if err := os.WriteFile(path, []byte("order.create: orders\nwidget.spin: widgets\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if p, ok := c.ResourcePath("widget.spin"); !ok || p != "widgets" {
		t.Fatalf("widget.spin = %q, %v", p, ok)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml")); err == nil {
		t.Fatal("loading a missing file must fail")
	}
}
