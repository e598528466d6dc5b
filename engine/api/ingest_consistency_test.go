package api

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/geckohook/geckohook/engine/catalog"
	"github.com/geckohook/geckohook/engine/contract"
)

// TestEventInputSameThroughKafkaAndAPI feeds each value both to the
// dispatcher's decoder (contract.DecodeEvent, as a Kafka record without a
// key) and to POST /v1/events (as {"event": value}), and requires the same
// answer: both accept it as the same Event, or both refuse it for the same
// reason (the API's error code is the decoder's reason; invalid JSON is a
// 400, any other refusal a 422). An accepted event's Kafka record must
// decode to that Event again. Two differences are by design and left out:
// a Kafka record's key stands in for a missing account_id (the API has no
// key), and the API refuses bodies over its size limit.
func TestEventInputSameThroughKafkaAndAPI(t *testing.T) {
	p := newInProcess(t)
	cat := catalog.Default()
	now := inProcessNow.Unix()
	ok := func(fields string) string { return `{"event":"order.create","object_id":7` + fields + `}` }
	for _, value := range []string{
		// Accepted both ways.
		ok(`,"account_id":"acc-1"`),
		ok(`,"account_id":77`),
		ok(`,"account_id":-0`),
		ok(`,"account_id":-9223372036854775808`),
		ok(`,"account_id":"77"`),
		ok(`,"account_id":"a","timestamp":1546272000,"resource_url":"https://x.test/o/7.json?a=1&b=<2>"`),
		ok(`,"account_id":"a","timestamp":null,"resource_url":null`),
		ok(`,"account_id":"a","resource_url":""`),
		ok(`,"account_id":"a\"\\\/\b\f\n\r\t\u0000\u2028"`),
		ok(`,"account_id":"\ud83d\ude00 \ud83d"`),
		ok(`,"account_id":"` + strings.Repeat("é", 128) + `"`),
		ok(`,"account_id":"a","extra":[1,{"object_id":-1}],"other":null`),
		ok(`,"account_id":"a","object_id":8`),
		ok(`,"account_id":null,"account_id":"a"`),
		`{"ACCOUNT_ID":"a","Event":"order.create","OBJECT_ID":7}`,
		"\t\n {\r\n\"account_id\" : 5 ,\"event\"\t:\"order\\u002ecreate\" , \"object_id\" :0 }\n ",
		// Refused both ways.
		ok(``),
		ok(`,"account_id":null`),
		ok(`,"account_id":""`),
		ok(`,"account_id":"` + strings.Repeat("a", 257) + `"`),
		ok(`,"account_id":9223372036854775808`),
		ok(`,"account_id":1.5`),
		ok(`,"account_id":1e3`),
		ok(`,"account_id":007`),
		ok(`,"account_id":true`),
		ok(`,"account_id":{"id":1}`),
		ok(`,"account_id":["a"]`),
		ok(`,"account_id":"a\x"`),
		ok(",\"account_id\":\"a\xff\""),
		ok(",\"account_id\":\"a\x01\""),
		ok(`,"account_id":"a","timestamp":"now"`),
		ok(`,"account_id":"a","timestamp":-1`),
		ok(`,"account_id":"a","timestamp":1e9`),
		ok(`,"account_id":"a","resource_url":5`),
		ok(`,"account_id":"a","resource_url":"` + strings.Repeat("u", contract.MaxFieldLen+1) + `"`),
		`{"account_id":"a","event":"order.create"}`,
		`{"account_id":"a","event":"order.create","object_id":null}`,
		`{"account_id":"a","event":"order.create","object_id":-1}`,
		`{"account_id":"a","event":"order.create","object_id":-0.0}`,
		`{"account_id":"a","event":"order.create","object_id":"7"}`,
		`{"account_id":"a","event":"order.create","object_id":9223372036854775808}`,
		`{"account_id":"a","object_id":7}`,
		`{"account_id":"a","event":null,"object_id":7}`,
		`{"account_id":"a","event":"","object_id":7}`,
		`{"account_id":"a","event":"order.explode","object_id":7}`,
		`{"account_id":"a","event":"Order.Create","object_id":7}`,
		`{"account_id":"a","event":7,"object_id":7}`,
		`{"account_id":"a","event":"order.create","object_id":7}x`,
		`{"account_id":"a","event":"order.create","object_id":7,}`,
		`{"account_id":"a","event":"order.create","object_id":7`,
		`{}`, `[]`, `null`, `"order.create"`, `7`, `true`,
	} {
		kafka, kafkaErr := contract.DecodeEvent([]byte(value), nil, now, cat)
		a := p.do("POST", "/v1/events", p.appToken, []byte(`{"event":`+value+`}`))
		if kafkaErr == nil {
			if a.status != 202 {
				t.Errorf("%q: Kafka accepts it as %+v, the API answers %d %s", value, kafka, a.status, a.body)
				continue
			}
			var echo struct{ Event contract.Event }
			if err := json.Unmarshal(a.body, &echo); err != nil || echo.Event != kafka {
				t.Errorf("%q: Kafka decodes %+v, the API echoes %s", value, kafka, a.body)
			}
			rec, _ := p.produced()
			back, err := contract.DecodeEvent(rec.value, rec.key, now+1, cat)
			if err != nil || back != kafka || string(rec.key) != kafka.AccountID {
				t.Errorf("%q: the API wrote %q=%s, which decodes to %+v, %v; want %+v", value, rec.key, rec.value, back, err, kafka)
			}
			continue
		}
		var de *contract.DecodeError
		if !errors.As(kafkaErr, &de) {
			t.Fatalf("%q: DecodeEvent error %T is not a *contract.DecodeError", value, kafkaErr)
		}
		wantStatus := 422
		if de.Reason == "invalid_json" {
			wantStatus = 400
		}
		var got errorBody
		if err := json.Unmarshal(a.body, &got); err != nil || a.status != wantStatus || got.Error.Code != de.Reason {
			t.Errorf("%q: Kafka refuses it (%v), the API answers %d %s; want %d with code %s", value, kafkaErr, a.status, a.body, wantStatus, de.Reason)
		}
	}
}

// errorBody is the API's error answer, {"error":{"code":…,"message":…}}.
type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}
