package api

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/engine/contract"
)

// jsonRoutes are the endpoints that read a JSON request body, with the
// token that gets a request past authorization to the body, and the status
// of a success.
var jsonRoutes = []struct {
	path  string
	admin bool
	ok    int
}{
	{"/v1/applications", true, 201},
	{"/v1/webhooks", false, 201},
	{"/v1/events", false, 202},
	{"/v1/events", true, 202},
}

// FuzzAPIJSONBodies sends any bytes as the body of every endpoint that
// reads JSON (route picks one of jsonRoutes) to the real handler over a
// real redis-server, and requires: never a 5xx (a panic answers 500), a
// JSON body with Content-Type application/json on every answer, on a 4xx
// {"error":{"code":…,"message":…}} with both set, on a success the
// endpoint's status, and an accepted event's Kafka record decoding to the
// event the API echoed.
func FuzzAPIJSONBodies(f *testing.F) {
	const hook = `"address":"https://hooks.example.com/x"`
	corpus := [][]string{
		{ // /v1/applications
			`{"application":{"name":"shop","developer_email":"dev@example.com"}}`,
			`{"application":{"name":"café ☕","developer_email":"a.b+c@sub.example.com"}}`,
			`{"application":{"name":"shop","developer_email":"Dev <dev@example.com>"}}`,
			`{"application":{"name":"` + strings.Repeat("n", 201) + `","developer_email":"dev@example.com"}}`,
			"{\"application\":{\"name\":\"a\xff\",\"developer_email\":\"dev@example.com\"}}",
			`{"application":{"name":"\ud800","developer_email":"dev@example.com"}}`,
			`{"application":{"name":1,"developer_email":true}}`,
			`{"application":{"name":null,"developer_email":null}}`,
			`{"application":null}`, `{"application":[]}`, `{"application":"x"}`,
			`{"Application":{"NAME":"shop","Developer_Email":"dev@example.com"}}`,
		},
		{ // /v1/webhooks
			`{"webhook":{"account_id":"acc","event":"order.create",` + hook + `}}`,
			`{"webhook":{"account_id":77,"event":"order.create",` + hook + `}}`,
			`{"webhook":{"account_id":"acc","event":"order.explode",` + hook + `}}`,
			`{"webhook":{"account_id":"acc","event":"order.create","address":"http://127.0.0.1/x"}}`,
			`{"webhook":{"account_id":"acc","event":"order.create","address":"https://[::ffff:10.0.0.1]/x"}}`,
			`{"webhook":{"account_id":"acc","event":"order.create","address":"https://u:p@hooks.example.com/#f"}}`,
			`{"webhook":{"account_id":"acc","event":"order.create","address":"https://nowhere.test/x"}}`,
			`{"webhook":{"account_id":"acc","event":"order.create","address":"%zz://"}}`,
			`{"webhook":{"account_id":"` + strings.Repeat("a", 257) + `","event":"order.create",` + hook + `}}`,
			`{"webhook":{"account_id":"\u0000","event":"order.create",` + hook + `}}`,
			`{"webhook":{}}`, `{"webhook":null}`, `{"webhook":[1]}`,
		},
		{ // /v1/events
			`{"event":{"account_id":"acc","event":"order.create","object_id":1}}`,
			`{"event":{"account_id":77,"event":"fulfillments.create","object_id":1234567,"timestamp":1546272000}}`,
			`{"event":{"account_id":"a\"\\\u2028","event":"order.create","object_id":1,"resource_url":"https://x.test/?a&b<c>"}}`,
			`{"event":{"account_id":"a","event":7,"object_id":1}}`,
			`{"event":{"account_id":"a","event":"order.create","object_id":1e3}}`,
			`{"event":{"account_id":"\ud83d","event":"order.create","object_id":-0}}`,
			`{"event":{"account_id":"a","event":"order.create","object_id":1,"object_id":-1}}`,
			"{\"event\":{\"account_id\":\"a\xff\",\"event\":\"order.create\",\"object_id\":1}}",
			`{"event":null}`, `{"event":[]}`, `{"event":"x"}`, `{"event":{}}`,
			`{"event":{"account_id":"a","event":"order.create","object_id":1},"event":null}`,
		},
		{ // any endpoint
			``, ` `, `{}`, `[]`, `null`, `0`, `"s"`, `{"a":1}x`, `{"a":1} {}`, `{`, `}`,
			strings.Repeat(`[`, 10001) + strings.Repeat(`]`, 10001),
			"\xef\xbb\xbf{}", "{\"a\":\"\x00\"}", `{"a":1e999999}`,
		},
	}
	for i, group := range corpus {
		for _, s := range group {
			for r := range jsonRoutes {
				if i < 3 && jsonRoutes[r].path != jsonRoutes[min(i, 2)].path {
					continue
				}
				f.Add(uint8(r), []byte(s))
			}
		}
	}
	p := newInProcess(f)
	cat := catalog.Default()
	f.Fuzz(func(t *testing.T, route uint8, body []byte) {
		r := jsonRoutes[int(route)%len(jsonRoutes)]
		token := p.appToken
		if r.admin {
			token = inProcessAdmin
		}
		a := p.do("POST", r.path, token, body)
		if a.status >= 500 {
			t.Fatalf("POST %s %q: %d %s", r.path, body, a.status, a.body)
		}
		if !strings.HasPrefix(a.contentType, "application/json") || !json.Valid(a.body) {
			t.Fatalf("POST %s %q: %d answered %q with Content-Type %q", r.path, body, a.status, a.body, a.contentType)
		}
		if a.status >= 400 {
			var e errorBody
			if err := json.Unmarshal(a.body, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
				t.Fatalf("POST %s %q: %d error answer %s lacks error.code or error.message", r.path, body, a.status, a.body)
			}
			return
		}
		if a.status != r.ok {
			t.Fatalf("POST %s %q: %d %s, want %d or an error", r.path, body, a.status, a.body, r.ok)
		}
		if r.path != "/v1/events" {
			return
		}
		var echo struct{ Event contract.Event }
		if err := json.Unmarshal(a.body, &echo); err != nil {
			t.Fatal(err)
		}
		rec, _ := p.produced()
		back, err := contract.DecodeEvent(rec.value, rec.key, 1, cat)
		if err != nil || back != echo.Event {
			t.Fatalf("POST %s %q: echoed %+v but wrote %s, which decodes to %+v, %v", r.path, body, echo.Event, rec.value, back, err)
		}
	})
}
