// Every endpoint is covered by auth: the route table (api/routes.cc) with the authorization step installed as
// `fhirlake serve --auth-config` installs it. The public set is exactly GET /healthz and GET {base}/metadata; every
// other route and method answers 401 without credentials, 403 with a valid signature of a principal whose policy
// allows nothing, and reaches its handler with one whose policy allows healthlake:*; the public set also holds the
// SMART discovery documents and the token endpoint (auth::RegisterAuthRoutes). A route added later without
// an action, or one the authorizer would not see, fails here.
#include <gtest/gtest.h>

#include <fstream>
#include <memory>
#include <set>
#include <string>

#include "api/routes.h"
#include "auth/authorizer.h"
#include "awsjson/model.h"
#include "bulk/export_engine.h"
#include "sink/memory_sink.h"
#include "sink/sigv4.h"
#include "store/resource_store.h"
#include "test_util.h"

namespace fhirlake {
namespace {

constexpr const char* kHost = "127.0.0.1:8080";

// A concrete request for a route pattern ("GET /datastore/{ds}/r4/{type}/{id}").
http::Request RequestFor(const std::string& route, const std::string& ds) {
  http::Request r;
  const size_t space = route.find(' ');
  r.method = route.substr(0, space);
  if (r.method == "*") r.method = "POST";
  std::string pattern = route.substr(space + 1);
  // A control-plane route: "POST / HealthLake.<Operation>" (the X-Amz-Target it answers), with an awsJson1_0 body.
  if (const size_t target = pattern.find(' '); target != std::string::npos) {
    r.headers.Add("X-Amz-Target", pattern.substr(target + 1));
    r.headers.Add("Content-Type", "application/x-amz-json-1.0");
    r.body = "{\"DatastoreId\": \"" + ds + "\"}";
    pattern = pattern.substr(0, target);
  }
  std::string path;
  for (const std::string& seg : http::Router::Segments(pattern)) {
    std::string v = seg;
    if (seg == "{ds}") v = ds;
    if (seg == "{type}") v = "Patient";
    if (seg == "{ctype}") v = "Observation";
    if (seg == "{id}") v = "p1";
    if (seg == "{vid}") v = "1";
    if (seg == "{job}") v = std::string(32, 'a');
    if (seg == "{file}") v = "Patient-1.ndjson";
    if (seg == "*") v = "Observation";
    path += "/" + v;
  }
  r.path = path;
  r.target = sink::UriEncode(path, /*encode_slash=*/false);  // as a SigV4 client sends it ("$" as "%24")
  r.headers.Add("Host", kHost);
  r.remote_address = "127.0.0.1:40000";
  return r;
}

void Sign(http::Request* r, const sink::AwsCredentials& c) {
  const std::string amz = sink::AmzDate(Clock::System().NowMillis());
  r->headers.Add("X-Amz-Date", amz);
  sink::SigV4Request s;
  s.method = r->method;
  s.path = r->path;
  s.headers = {{"Host", kHost}, {"X-Amz-Date", amz}};
  s.payload_sha256 = sink::Sha256Hex(r->body);
  r->headers.Add("Authorization", sink::AuthorizationHeader(s, c, amz, "us-east-1", "healthlake"));
}

TEST(AuthCoverageTest, EveryRouteButThePublicOnesNeedsAnAllowedSignedPrincipal) {
  testutil::TempDir tmp;
  store::StoreOptions so;
  so.data_dir = tmp.str() + "/data";
  auto catalog = store::OpenSqliteCatalog(so);
  ASSERT_OK(catalog);
  auto sink = sink::NewMemorySink();
  bulk::ExportEngine engine(catalog->get(), sink.get(), bulk::EngineOptions{}, Clock::System());
  api::ApiContext ctx;
  ctx.catalog = catalog->get();
  ctx.exports = &engine;
  ctx.sink = sink.get();
  ctx.public_base_url = "http://127.0.0.1:8080";
  ctx.server_export_bucket = "fhirlake-server-exports";
  const std::string ds = (*catalog)->Default()->info().id;

  const std::string config = tmp.str() + "/auth.json";
  std::ofstream(config) << R"({"region": "us-east-1", "accountId": "111122223333", "defaultModes": ["sigv4"],
    "principals": [
      {"accessKeyId": "AKIANOTHINGALLOWED1", "secretAccessKey": "secret-1", "policies": [
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}]},
      {"accessKeyId": "AKIAEVERYTHING00001", "secretAccessKey": "secret-2", "policies": [
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["healthlake:*", "iam:PassRole"],
                                                 "Resource": "*"}]}]}]})";
  ASSERT_OK_AND_ASSIGN(auto authorizer, auth::Authorizer::Load(config, Clock::System(), tmp.str()));
  ctx.register_auth_routes = [&](http::Router& r) { auth::RegisterAuthRoutes(r, authorizer.get()); };
  auto router = api::BuildRouter(ctx);
  router->SetAuthorizer(
      [&](const http::Request& req, http::RequestContext* rc) { return authorizer->Authorize(req, rc); });

  const sink::AwsCredentials nothing{"AKIANOTHINGALLOWED1", "secret-1", ""};
  const sink::AwsCredentials everything{"AKIAEVERYTHING00001", "secret-2", ""};
  std::set<std::string> public_routes;
  int protected_routes = 0;
  for (const auto& [route, info] : router->Routes()) {
    SCOPED_TRACE(route);
    http::Request anonymous = RequestFor(route, ds);
    http::Response r = router->Dispatch(anonymous);
    if (info.action.empty()) {
      public_routes.insert(route);
      EXPECT_NE(r.status, 401);
      EXPECT_NE(r.status, 403);
      continue;
    }
    ++protected_routes;
    EXPECT_EQ(r.status, 401) << r.body;
    EXPECT_NE(r.body.find("not signed"), std::string::npos) << r.body;

    http::Request unprivileged = RequestFor(route, ds);
    Sign(&unprivileged, nothing);
    r = router->Dispatch(unprivileged);
    EXPECT_EQ(r.status, 403) << r.body;
    EXPECT_NE(r.body.find("is not authorized to perform: " + info.action), std::string::npos) << r.body;

    http::Request wrong_secret = RequestFor(route, ds);
    Sign(&wrong_secret, {"AKIAEVERYTHING00001", "not-the-secret", ""});
    r = router->Dispatch(wrong_secret);
    EXPECT_EQ(r.status, 403) << r.body;
    EXPECT_NE(r.body.find("does not match"), std::string::npos) << r.body;

    http::Request allowed = RequestFor(route, ds);
    Sign(&allowed, everything);
    r = router->Dispatch(allowed);
    EXPECT_NE(r.status, 401) << r.body;
    EXPECT_NE(r.status, 403) << r.body;
  }
  // Every operation of the control plane's model is a route of its own (and so was judged above).
  std::set<std::string> targets, operations;
  for (const auto& [route, info] : router->Routes()) {
    if (!info.target.empty()) targets.insert(info.target);
  }
  for (const auto& op : awsjson::HealthLakeModel().operations) operations.insert("HealthLake." + op.name);
  EXPECT_EQ(targets, operations);
  const std::string r4 = "/datastore/{ds}/r4";
  EXPECT_EQ(public_routes,
            (std::set<std::string>{"GET /healthz", "GET " + r4 + "/metadata", "GET /.well-known/smart-configuration",
                                   "GET " + r4 + "/.well-known/smart-configuration", "POST /auth/token"}));
  EXPECT_GT(protected_routes, 25);
}

TEST(AuthCoverageTest, ConfigurationErrorsNameTheMember) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"[]", "JSON object"},
      {R"({"accountId": "123"})", "accountId"},
      {R"({"defaultModes": ["magic"]})", "modes"},
      {R"({"issuers": {}})", "issuers must be an array"},
      {R"({"issuers": [{"issuer": "https://idp.example", "audience": "f", "jwks": {"keys": []},
           "algorithms": ["HS256"]}]})",
       "'HS256' is not accepted"},
      {R"({"issuers": [{"issuer": "https://idp.example", "audience": "f", "jwks": {"keys": []},
           "algorithms": ["none"]}]})",
       "'none' is not accepted"},
      {R"({"issuers": [{"issuer": "https://idp.example", "audience": "f", "jwks": {"keys": []}}]})", "algorithms"},
      {R"({"issuers": [{"issuer": "https://idp.example", "jwks": {"keys": []}, "algorithms": ["RS256"]}]})",
       "audience is required"},
      {R"({"issuers": [{"issuer": "https://idp.example#x", "audience": "f", "jwks": {"keys": []},
           "algorithms": ["RS256"]}]})",
       "fragment"},
      {R"({"issuers": [{"issuer": "https://idp.example", "audience": "f", "algorithms": ["RS256"]}]})",
       "jwks (inline) or jwksUrl"},
      {R"({"issuers": [{"issuer": "https://idp.example", "audience": "f", "jwks": {"keys": []},
           "jwksUrl": "https://idp.example/jwks", "algorithms": ["RS256"]}]})",
       "one of them"},
      {R"({"issuers": [{"issuer": "https://i", "audience": "f", "jwks": {"keys": []}, "algorithms": ["RS256"]},
                       {"issuer": "https://i", "audience": "g", "jwks": {"keys": []}, "algorithms": ["RS256"]}]})",
       "listed twice"},
      {R"({"issuers": [{"issuer": "https://i", "audience": "f", "jwks": {"keys": []}, "algorithms": ["RS256"],
           "scopes": ["system/Nonsense.read"]}]})",
       "Nonsense"},
      {R"({"smartClients": [{"clientId": "c", "jwksUrl": "http://10.1.2.3/jwks", "scopes": []}]})", "https://"},
      {R"({"smartClients": [{"clientId": "c", "jwksUrl": "not a url", "scopes": []}]})", "not an absolute URL"},
      {R"({"corsOrigins": "https://app.example"})", "array"},
      {R"({"corsOrigins": ["https://app.example/path"]})", "not an origin"},
      {R"({"corsOrigins": ["app.example"]})", "not an origin"},
      {R"({"defaultModes": ["none"], "corsOrigins": ["*"]})", "with a datastore in mode none"},
      {R"({"smartClients": [{"clientId": "c", "jwks": {"keys": [{"kty": "oct", "k": "AAAA"}]}, "scopes": []}]})",
       "kty"},
      {R"({"tokenLifetimeSeconds": 5})", "tokenLifetimeSeconds"},
      {R"({"principals": [{"accessKeyId": "AKIA1234567890123456"}]})", "secretAccessKey"},
      {R"({"principals": [{"accessKeyId": "short", "secretAccessKey": "x"}]})", "accessKeyId"},
      {R"({"principals": [{"accessKeyId": "AKIA1234567890123456", "secretAccessKey": "x", "policies": [
           {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*"}]}]}]})",
       "Resource"},
      {R"({"datastores": {"x": {"mode": ["none"]}}})", "mode"},
      {R"({"unknown": 1})", "unknown"},
  };
  for (const auto& [doc, mention] : bad) {
    EXPECT_STATUS(auth::ParseAuthConfig(doc), kInvalid, mention) << doc;
  }
  ASSERT_OK_AND_ASSIGN(auto c, auth::ParseAuthConfig(R"({"defaultModes": ["sigv4"],
      "datastores": {"abc": {"modes": ["none"], "tags": {"team": "research"}}}})"));
  EXPECT_EQ(c.ModesFor("abc"), std::vector<std::string>{"none"});
  EXPECT_EQ(c.ModesFor("other"), std::vector<std::string>{"sigv4"});
  EXPECT_TRUE(c.AllowsNone());
  // A client or issuer whose JWKS is still empty (keys to come by URL, or not yet registered) loads; it cannot
  // authenticate anyone until it has keys.
  ASSERT_OK_AND_ASSIGN(auto example, auth::ParseAuthConfig(R"({"region": "us-east-1", "accountId": "111122223333",
      "smartClients": [{"clientId": "bulk-client", "jwks": {"keys": []}, "scopes": ["system/*.rs"]},
                       {"clientId": "other", "jwksUrl": "http://127.0.0.1:9999/jwks.json", "scopes": []}],
      "issuers": [{"issuer": "https://idp.example", "audience": "fhirlake", "jwks": {"keys": []},
                   "algorithms": ["RS256", "ES384"]}],
      "corsOrigins": ["https://app.example.org", "http://localhost:3000", "*"]})"));
  EXPECT_EQ(example.issuers.size(), 1u);
  EXPECT_EQ(example.issuers[0].algorithms, (std::vector<std::string>{"RS256", "ES384"}));
  EXPECT_EQ(example.smart_clients[1].keys->url(), "http://127.0.0.1:9999/jwks.json");
  EXPECT_EQ(example.cors_origins.size(), 3u);
  // Origins as browsers send them: lower case, without the scheme's default port.
  ASSERT_OK_AND_ASSIGN(auto cors, auth::ParseAuthConfig(
                                      R"({"corsOrigins": ["https://App.Example.org:443", "http://LocalHost:80",
                                                          "https://a.example:8443"]})"));
  EXPECT_EQ(cors.cors_origins,
            (std::vector<std::string>{"https://app.example.org", "http://localhost", "https://a.example:8443"}));
  EXPECT_EQ(c.DatastoreArn("abc"), "arn:aws:healthlake:us-east-1:111122223333:datastore/fhir/abc");
  EXPECT_EQ(auth::SourceIp("127.0.0.1:5"), "127.0.0.1");
  EXPECT_EQ(auth::SourceIp("[::1]:5"), "::1");
  EXPECT_EQ(auth::SourceIp("[::ffff:10.1.2.3]:5"), "10.1.2.3");  // an IPv4 client of a dual-stack listener
}

}  // namespace
}  // namespace fhirlake
