package api

import (
	_ "embed"

	"github.com/valyala/fasthttp"
)

// openAPIDocument describes every route Handler serves, as OpenAPI 3.1. The
// package's tests validate each request they make and each answer they get
// against it, so it changes with the handlers or the tests fail.
//
//go:embed openapi.json
var openAPIDocument []byte

// serveOpenAPI answers GET /v1/openapi.json.
func serveOpenAPI(ctx *fasthttp.RequestCtx) {
	ctx.SetStatusCode(fasthttp.StatusOK)
	ctx.SetContentType("application/json; charset=utf-8")
	ctx.SetBody(openAPIDocument)
}
