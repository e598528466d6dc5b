package api

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// page gets one page of GET /v1/webhooks.
func (e *env) page(token, query string) (ids []string, next string) {
	e.t.Helper()
	r := e.do("GET", "/v1/webhooks"+query, token, "")
	if r.status != 200 {
		e.t.Fatalf("GET /v1/webhooks%s: %d %s", query, r.status, r.raw)
	}
	var out struct {
		Webhooks   []WebhookView `json:"webhooks"`
		NextCursor *string       `json:"next_cursor"`
	}
	if err := json.Unmarshal(r.raw, &out); err != nil {
		e.t.Fatal(err)
	}
	if out.Webhooks == nil {
		e.t.Fatalf("page without a webhooks array: %s", r.raw)
	}
	for _, w := range out.Webhooks {
		ids = append(ids, w.ID)
	}
	if out.NextCursor != nil {
		if *out.NextCursor == "" {
			e.t.Fatalf("empty next_cursor: %s", r.raw)
		}
		next = *out.NextCursor
	}
	return ids, next
}

// walk follows next_cursor from the first page and returns every id seen
// and the size of each page.
func (e *env) walk(token, query string) (ids []string, sizes []int) {
	e.t.Helper()
	cursor := ""
	for {
		v := url.Values{}
		if query != "" {
			var err error
			if v, err = url.ParseQuery(query); err != nil {
				e.t.Fatal(err)
			}
		}
		if cursor != "" {
			v.Set("cursor", cursor)
		}
		q := ""
		if len(v) > 0 {
			q = "?" + v.Encode()
		}
		page, next := e.page(token, q)
		ids = append(ids, page...)
		sizes = append(sizes, len(page))
		if next == "" {
			return ids, sizes
		}
		if len(sizes) > 1000 {
			e.t.Fatalf("no end after %d pages", len(sizes))
		}
		cursor = next
	}
}

func TestListWebhooksPages(t *testing.T) {
	e := start(t, nil)
	app := e.createApp("shop")
	other := e.createApp("other")
	const n = 25
	var all, acc1 []string
	for i := range n {
		// Three webhooks a second, so pages cross both created_at and
		// id ties; ids are random, so within a second the order is theirs.
		e.seconds.Store(int64(i / 3))
		account := "acc-0"
		if i%2 == 1 {
			account = "acc-1"
		}
		w := e.createWebhook(app.Token, account, "order.create", fmt.Sprintf("https://a.example.com/%d", i))
		all = append(all, w.ID)
		if account == "acc-1" {
			acc1 = append(acc1, w.ID)
		}
	}
	e.createWebhook(other.Token, "acc-1", "order.create", "https://b.example.com/other")
	// The registry's order: created_at (here i/3 seconds), then id.
	order := func(ids []string) []string {
		at := map[string]int{}
		for i, id := range all {
			at[id] = i / 3
		}
		out := slices.Clone(ids)
		slices.SortFunc(out, func(a, b string) int {
			if at[a] != at[b] {
				return at[a] - at[b]
			}
			return strings.Compare(a, b)
		})
		return out
	}
	all, acc1 = order(all), order(acc1)

	for _, tc := range []struct {
		query string
		want  []string
		limit int
	}{
		{"", all, 100},
		{"limit=1", all, 1},
		{"limit=2", all, 2},
		{"limit=7", all, 7},
		{"limit=24", all, 24},
		{"limit=25", all, 25},
		{"limit=26", all, 26},
		{"limit=1000", all, 1000},
		{"account_id=acc-1&limit=1", acc1, 1},
		{"account_id=acc-1&limit=5", acc1, 5},
		{"account_id=acc-1", acc1, 100},
		{"account_id=nobody&limit=3", nil, 3},
	} {
		t.Run(tc.query, func(t *testing.T) {
			got, sizes := e.walk(app.Token, tc.query)
			if !slices.Equal(got, tc.want) {
				t.Fatalf("walk returned %d ids:\n%v\nwant %d:\n%v", len(got), got, len(tc.want), tc.want)
			}
			pages := max(1, (len(tc.want)+tc.limit-1)/tc.limit)
			if len(sizes) != pages {
				t.Fatalf("%d pages %v, want %d", len(sizes), sizes, pages)
			}
			for i, s := range sizes[:len(sizes)-1] {
				if s != tc.limit {
					t.Fatalf("page %d has %d webhooks, want the limit %d: %v", i, s, tc.limit, sizes)
				}
			}
		})
	}

	// An empty cursor is the first page.
	if got, _ := e.page(app.Token, "?limit=3&cursor="); !slices.Equal(got, all[:3]) {
		t.Fatalf("empty cursor: %v, want %v", got, all[:3])
	}
}

func TestListWebhooksPagesAcrossChanges(t *testing.T) {
	e := start(t, nil)
	app := e.createApp("shop")
	var ids []string
	for i := range 6 {
		e.seconds.Store(int64(i))
		ids = append(ids, e.createWebhook(app.Token, "a", "order.create", fmt.Sprintf("https://a.example.com/%d", i)).ID)
	}
	first, next := e.page(app.Token, "?limit=2")
	if !slices.Equal(first, ids[:2]) || next == "" {
		t.Fatalf("first page %v next %q, want %v and a cursor", first, next, ids[:2])
	}
	// The webhook the cursor points at is deleted, one not yet listed is
	// deleted and one is created: the walk goes on where it was.
	for _, id := range []string{ids[1], ids[3]} {
		if r := e.do("DELETE", "/v1/webhooks/"+id, app.Token, ""); r.status != 204 {
			t.Fatalf("delete %s: %d %s", id, r.status, r.raw)
		}
	}
	e.seconds.Store(10)
	late := e.createWebhook(app.Token, "a", "order.create", "https://a.example.com/late").ID
	second, next := e.page(app.Token, "?limit=2&cursor="+next)
	if want := []string{ids[2], ids[4]}; !slices.Equal(second, want) || next == "" {
		t.Fatalf("second page %v next %q, want %v and a cursor", second, next, want)
	}
	third, next := e.page(app.Token, "?limit=2&cursor="+next)
	if want := []string{ids[5], late}; !slices.Equal(third, want) || next != "" {
		t.Fatalf("third page %v next %q, want %v and no cursor", third, next, want)
	}
}

func TestListWebhooksBadQuery(t *testing.T) {
	e := start(t, nil)
	app := e.createApp("shop")
	e.createWebhook(app.Token, "a", "order.create", "https://a.example.com/1")
	b64 := base64.RawURLEncoding.EncodeToString
	for _, tc := range []struct {
		name, query, want string
	}{
		{"zero limit", "limit=0", "limit"},
		{"negative limit", "limit=-1", "limit"},
		{"limit over the max", "limit=1001", "1000"},
		{"word limit", "limit=ten", "limit"},
		{"empty limit", "limit=", "limit"},
		{"fractional limit", "limit=1.5", "limit"},
		{"not base64url", "cursor=" + "%2B%2F%3D%3D", "base64url"},
		{"padded base64", "cursor=" + b64([]byte("1:wh_1")) + "%3D", "base64url"},
		{"no separator", "cursor=" + b64([]byte("12345")), "position"},
		{"time not a number", "cursor=" + b64([]byte("soon:wh_1")), "position"},
		{"no id", "cursor=" + b64([]byte("1:")), "position"},
		{"not UTF-8", "cursor=" + b64([]byte("1:\xff")), "position"},
		{"too long", "cursor=" + strings.Repeat("A", 129), "128"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := e.do("GET", "/v1/webhooks?"+tc.query, app.Token, "")
			e.expectError(r, 400, "invalid_query", tc.want)
		})
	}
	// A well-formed cursor past every webhook is an empty last page.
	if ids, next := e.page(app.Token, "?cursor="+b64([]byte("9223372036854775807:~"))); len(ids) != 0 || next != "" {
		t.Fatalf("past the end: %v %q", ids, next)
	}
}
