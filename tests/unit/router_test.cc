// Tests for http::Router (pattern matching, route order, 404/405) and the helpers in http_types
// (percent-decoding, query parsing, case-insensitive headers).
#include "http/router.h"

#include <gtest/gtest.h>

#include <string>

#include "http/http_types.h"

namespace fhirlake::http {
namespace {

Request MakeRequest(std::string method, std::string path) {
  Request r;
  r.method = std::move(method);
  r.path = std::move(path);
  r.target = r.path;
  return r;
}

// The error responder echoes status and message so tests can check exactly what the router reported.
Router MakeRouter() {
  return Router([](const Request&, int status, const std::string& message) {
    Response r;
    r.status = status;
    r.body = message;
    return r;
  });
}

// A handler that reports which route ran and the captured params ("name=value;" in map order).
Handler Tag(std::string tag) {
  return [tag](const Request&, const RequestContext& ctx) {
    Response r;
    r.body = tag;
    for (const auto& [k, v] : ctx.params) r.body += ";" + k + "=" + v;
    return r;
  };
}

TEST(RouterTest, LiteralAndCaptureSegments) {
  Router router = MakeRouter();
  router.Add("GET", "/metadata", Tag("metadata"));
  router.Add("GET", "/{type}/{id}", Tag("read"));
  router.Add("GET", "{type}", Tag("search"));

  EXPECT_EQ(router.Dispatch(MakeRequest("GET", "/metadata")).body, "metadata");
  EXPECT_EQ(router.Dispatch(MakeRequest("GET", "/Patient/p1")).body, "read;id=p1;type=Patient");
  EXPECT_EQ(router.Dispatch(MakeRequest("GET", "/Patient")).body, "search;type=Patient");
  // Leading/trailing slashes do not matter.
  EXPECT_EQ(router.Dispatch(MakeRequest("GET", "Patient/p1/")).body, "read;id=p1;type=Patient");
}

TEST(RouterTest, LiteralsAreCaseSensitive) {
  Router router = MakeRouter();
  router.Add("GET", "/metadata", Tag("metadata"));
  Response r = router.Dispatch(MakeRequest("GET", "/Metadata"));
  EXPECT_EQ(r.status, 404);
}

TEST(RouterTest, EmptyMiddleSegmentNeverMatches) {
  Router router = MakeRouter();
  router.Add("GET", "/{type}/{id}", Tag("read"));
  router.Add("GET", "/{a}/{b}/{c}", Tag("three"));
  Response r = router.Dispatch(MakeRequest("GET", "/Patient//x"));
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.body, "Unknown route: GET /Patient//x");
}

TEST(RouterTest, FirstMatchWins) {
  Router router = MakeRouter();
  router.Add("GET", "/Patient/$export", Tag("export"));
  router.Add("GET", "/{type}/{id}", Tag("read"));
  EXPECT_EQ(router.Dispatch(MakeRequest("GET", "/Patient/$export")).body, "export");
  EXPECT_EQ(router.Dispatch(MakeRequest("GET", "/Group/$export")).body, "read;id=$export;type=Group");
}

TEST(RouterTest, GenericRouteRegisteredFirstShadowsSpecificOne) {
  Router router = MakeRouter();
  router.Add("GET", "/{type}/{id}", Tag("read"));
  router.Add("GET", "/Patient/$export", Tag("export"));
  EXPECT_EQ(router.Dispatch(MakeRequest("GET", "/Patient/$export")).body, "read;id=$export;type=Patient");
}

TEST(RouterTest, UnknownRouteIs404WithMessage) {
  Router router = MakeRouter();
  router.Add("GET", "/metadata", Tag("metadata"));
  Response r = router.Dispatch(MakeRequest("GET", "/x/y"));
  EXPECT_EQ(r.status, 404);
  EXPECT_EQ(r.body, "Unknown route: GET /x/y");
  EXPECT_FALSE(r.headers.Has("Allow"));
}

TEST(RouterTest, WrongMethodIs405WithAllowHeader) {
  Router router = MakeRouter();
  router.Add("GET", "/x", Tag("get"));
  router.Add("POST", "/x", Tag("post"));
  router.Add("GET", "/x", Tag("get-again"));  // listed once in Allow
  router.Add("DELETE", "/y", Tag("other path"));
  Response r = router.Dispatch(MakeRequest("PUT", "/x"));
  EXPECT_EQ(r.status, 405);
  EXPECT_EQ(r.body, "Method PUT is not allowed on /x; allowed: GET, POST");
  EXPECT_EQ(r.headers.Get("Allow"), "GET, POST");
  EXPECT_EQ(r.headers.Get("allow"), "GET, POST");
}

TEST(RouterTest, MethodMatchingPicksTheRouteForThatMethod) {
  Router router = MakeRouter();
  router.Add("GET", "/{type}/{id}", Tag("read"));
  router.Add("PUT", "/{type}/{id}", Tag("update"));
  router.Add("DELETE", "/{type}/{id}", Tag("delete"));
  EXPECT_EQ(router.Dispatch(MakeRequest("PUT", "/Patient/1")).body, "update;id=1;type=Patient");
  EXPECT_EQ(router.Dispatch(MakeRequest("DELETE", "/Patient/1")).body, "delete;id=1;type=Patient");
  // HEAD falls back to the GET route (the server drops the body).
  EXPECT_EQ(router.Dispatch(MakeRequest("HEAD", "/Patient/1")).body, "read;id=1;type=Patient");
}

TEST(RouterTest, StarMatchesAnyMethod) {
  Router router = MakeRouter();
  router.Add("GET", "/a", Tag("get"));
  router.Add("*", "/a", Tag("any"));
  EXPECT_EQ(router.Dispatch(MakeRequest("GET", "/a")).body, "get");
  EXPECT_EQ(router.Dispatch(MakeRequest("PATCH", "/a")).body, "any");
  EXPECT_EQ(router.Dispatch(MakeRequest("OPTIONS", "/a")).body, "any");
  EXPECT_EQ(router.Dispatch(MakeRequest("GET", "/b")).status, 404);
}

TEST(RouterTest, RootPath) {
  Router router = MakeRouter();
  router.Add("GET", "/", Tag("root"));
  EXPECT_EQ(router.Dispatch(MakeRequest("GET", "/")).body, "root");
  EXPECT_EQ(router.Dispatch(MakeRequest("GET", "")).body, "root");
  EXPECT_EQ(router.Dispatch(MakeRequest("GET", "/x")).status, 404);
}

TEST(RouterTest, HandlerSeesTheRequest) {
  Router router = MakeRouter();
  router.Add("POST", "/{type}", [](const Request& req, const RequestContext& ctx) {
    return Response::Json(201, ctx.param("type") + ":" + req.body);
  });
  Request req = MakeRequest("POST", "/Patient");
  req.body = "{}";
  Response r = router.Dispatch(req);
  EXPECT_EQ(r.status, 201);
  EXPECT_EQ(r.body, "Patient:{}");
  EXPECT_EQ(r.headers.Get("Content-Type"), "application/fhir+json");
}

// Regression (hardening issue, defect 7): "%2F" was decoded before routing, so "Patient%2Fx" read Patient/x and
// "Patient/a%2F_history" listed the history of "a". The path is split first; each segment is decoded after.
TEST(RouterTest, EncodedSlashStaysInsideItsSegment) {
  Router router = MakeRouter();
  router.Add("GET", "/{type}/{id}/_history", Tag("history"));
  router.Add("GET", "/{type}/{id}", Tag("read"));
  router.Add("GET", "/{type}", Tag("type"));
  EXPECT_EQ(router.Dispatch(MakeRequest("GET", "/Patient/a%2F_history")).body, "read;id=a/_history;type=Patient");
  EXPECT_EQ(router.Dispatch(MakeRequest("GET", "/Patient%2Fx")).body, "type;type=Patient/x");
  EXPECT_EQ(router.Dispatch(MakeRequest("GET", "/Patient/a%2f_history")).body, "read;id=a/_history;type=Patient");
  // Other escapes are decoded within the segment.
  EXPECT_EQ(router.Dispatch(MakeRequest("GET", "/Patient/a%2Db")).body, "read;id=a-b;type=Patient");
  EXPECT_EQ(Router::Segments("/a%2Fb/c/"), (std::vector<std::string>{"a/b", "c"}));
}

TEST(RouterTest, ContextCarriesRouteActionDatastoreAndRequestId) {
  Router router = MakeRouter();
  router.Add("GET", "/datastore/{ds}/r4/{type}/{id}", RouteInfo{"healthlake:ReadResource"},
             [](const Request&, const RequestContext& ctx) {
               Response r;
               r.body = ctx.route + "|" + ctx.info->action + "|" + ctx.datastore_id + "|" + ctx.principal.kind;
               return r;
             });
  Response r = router.Dispatch(MakeRequest("GET", "/datastore/d1/r4/Patient/p"));
  EXPECT_EQ(r.body, "GET /datastore/{ds}/r4/{type}/{id}|healthlake:ReadResource|d1|anonymous");
  EXPECT_EQ(r.headers.Get("X-Request-Id").size(), 16u);
  Response r2 = router.Dispatch(MakeRequest("GET", "/datastore/d1/r4/Patient/p"));
  EXPECT_NE(r.headers.Get("X-Request-Id"), r2.headers.Get("X-Request-Id"));
}

// The authorization step runs after matching (it sees the route) and before the handler, which it can replace.
TEST(RouterTest, AuthorizerSeesTheMatchedRouteAndCanAnswer) {
  Router router = MakeRouter();
  int handler_runs = 0;
  router.Add("DELETE", "/datastore/{ds}/r4/{type}/{id}", RouteInfo{"healthlake:DeleteResource"},
             [&](const Request&, const RequestContext& ctx) {
               ++handler_runs;
               Response r;
               r.body = "deleted by " + ctx.principal.id;
               return r;
             });
  router.Add("GET", "/healthz", RouteInfo{"", true}, Tag("health"));
  std::vector<std::string> seen;
  router.SetAuthorizer([&](const Request& req, RequestContext* ctx) -> std::optional<Response> {
    seen.push_back(ctx->info->action + "@" + ctx->datastore_id);
    if (req.headers.Get("Authorization") != "ok") {
      Response r;
      r.status = 403;
      r.body = "denied";
      return r;
    }
    ctx->principal.kind = "test";
    ctx->principal.id = "alice";
    return std::nullopt;
  });
  Response denied = router.Dispatch(MakeRequest("DELETE", "/datastore/d9/r4/Patient/p"));
  EXPECT_EQ(denied.status, 403);
  EXPECT_EQ(handler_runs, 0);
  Request ok = MakeRequest("DELETE", "/datastore/d9/r4/Patient/p");
  ok.headers.Add("Authorization", "ok");
  EXPECT_EQ(router.Dispatch(ok).body, "deleted by alice");
  EXPECT_EQ(handler_runs, 1);
  EXPECT_EQ(seen, (std::vector<std::string>{"healthlake:DeleteResource@d9", "healthlake:DeleteResource@d9"}));
  // Unmatched routes never reach the authorizer (404 first).
  EXPECT_EQ(router.Dispatch(MakeRequest("GET", "/nope")).status, 404);
  EXPECT_EQ(seen.size(), 2u);
  EXPECT_TRUE(router.IsInline(MakeRequest("GET", "/healthz")));
  EXPECT_FALSE(router.IsInline(MakeRequest("DELETE", "/datastore/d9/r4/Patient/p")));
  EXPECT_FALSE(router.IsInline(MakeRequest("GET", "/nope")));
}

TEST(PercentDecodeTest, DecodesEscapes) {
  EXPECT_EQ(PercentDecode("a%20b", false), "a b");
  EXPECT_EQ(PercentDecode("a%2Cb%2cc", false), "a,b,c");
  EXPECT_EQ(PercentDecode("%C3%A9", false), "\xC3\xA9");
  EXPECT_EQ(PercentDecode("Patient%2F1", false), "Patient/1");
}

TEST(PercentDecodeTest, PlusIsSpaceOnlyWhenAsked) {
  EXPECT_EQ(PercentDecode("a+b", true), "a b");
  EXPECT_EQ(PercentDecode("a+b", false), "a+b");
  EXPECT_EQ(PercentDecode("a%2Bb", true), "a+b");
}

TEST(PercentDecodeTest, InvalidEscapesAreKept) {
  EXPECT_EQ(PercentDecode("100%", false), "100%");
  EXPECT_EQ(PercentDecode("%zz", false), "%zz");
  EXPECT_EQ(PercentDecode("%4", false), "%4");
  EXPECT_EQ(PercentDecode("%%41", false), "%A");
  EXPECT_EQ(PercentDecode("", false), "");
}

TEST(ParseQueryTest, SplitsAndDecodes) {
  auto params = ParseQuery("name=John+Smith&_type=Patient%2CObservation&x%20y=1");
  ASSERT_EQ(params.size(), 3u);
  EXPECT_EQ(params[0].name, "name");
  EXPECT_EQ(params[0].value, "John Smith");
  EXPECT_EQ(params[1].name, "_type");
  EXPECT_EQ(params[1].value, "Patient,Observation");
  EXPECT_EQ(params[2].name, "x y");
  EXPECT_EQ(params[2].value, "1");
}

TEST(ParseQueryTest, RepeatedParamsKeepOrder) {
  auto params = ParseQuery("date=ge2020&date=le2021");
  ASSERT_EQ(params.size(), 2u);
  EXPECT_EQ(params[0].value, "ge2020");
  EXPECT_EQ(params[1].value, "le2021");

  Request req;
  req.query = params;
  ASSERT_NE(req.QueryValue("date"), nullptr);
  EXPECT_EQ(*req.QueryValue("date"), "ge2020");
  EXPECT_EQ(req.QueryValue("missing"), nullptr);
}

TEST(ParseQueryTest, MissingEqualsAndEmptyPieces) {
  auto params = ParseQuery("flag&a=&=v&&b=1=2&");
  ASSERT_EQ(params.size(), 4u);
  EXPECT_EQ(params[0].name, "flag");
  EXPECT_EQ(params[0].value, "");
  EXPECT_EQ(params[1].name, "a");
  EXPECT_EQ(params[1].value, "");
  EXPECT_EQ(params[2].name, "");
  EXPECT_EQ(params[2].value, "v");
  EXPECT_EQ(params[3].name, "b");
  EXPECT_EQ(params[3].value, "1=2");  // only the first '=' separates
  EXPECT_TRUE(ParseQuery("").empty());
}

TEST(HeadersTest, CaseInsensitiveGetSetHas) {
  Headers h;
  h.Add("Content-Type", "text/plain");
  h.Add("X-A", "1");
  h.Add("x-a", "2");
  EXPECT_EQ(h.Get("content-type"), "text/plain");
  EXPECT_TRUE(h.Has("X-a"));
  EXPECT_FALSE(h.Has("X-B"));
  EXPECT_EQ(h.Get("X-B"), "");
  EXPECT_EQ(h.Get("X-A"), "1");
  h.Set("X-A", "3");
  ASSERT_EQ(h.items().size(), 2u);
  EXPECT_EQ(h.Get("x-a"), "3");
  h.Set("Location", "/x");
  EXPECT_EQ(h.items().back().first, "Location");
  EXPECT_TRUE(EqualsIgnoreCase("ETag", "etag"));
  EXPECT_FALSE(EqualsIgnoreCase("ETag", "etags"));
}

}  // namespace
}  // namespace fhirlake::http
