// The server's one route table (api/routes.cc): every route names the action the authorization step will check,
// so that no endpoint (FHIR REST, search, both export views, the IG status and file URLs) can be left outside
// auth (docs/SECURITY.md). The public set is exactly GET /healthz and GET {base}/metadata.
#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <set>
#include <string>

#include "api/routes.h"
#include "bulk/export_engine.h"
#include "sink/memory_sink.h"
#include "store/resource_store.h"
#include "test_util.h"

namespace fhirlake::api {
namespace {

TEST(RouteTableTest, EveryRouteNamesItsAction) {
  testutil::TempDir tmp;
  store::StoreOptions so;
  so.data_dir = tmp.str();
  auto catalog = store::OpenSqliteCatalog(so);
  ASSERT_TRUE(catalog.ok()) << catalog.status().ToString();
  auto sink = sink::NewMemorySink();
  bulk::ExportEngine engine(catalog->get(), sink.get(), bulk::EngineOptions{}, Clock::System());
  ApiContext ctx;
  ctx.catalog = catalog->get();
  ctx.exports = &engine;
  ctx.sink = sink.get();
  ctx.public_base_url = "http://127.0.0.1:1";
  auto router = BuildRouter(ctx);
  std::map<std::string, std::string> actions;
  std::set<std::string> public_routes;
  for (const auto& [name, info] : router->Routes()) {
    if (info.action.empty()) {
      public_routes.insert(name);
      continue;
    }
    EXPECT_TRUE(info.action.starts_with("healthlake:")) << name << " has no action: '" << info.action << "'";
    actions[name] = info.action;
  }
  const std::string r4 = "/datastore/{ds}/r4";
  EXPECT_EQ(public_routes, (std::set<std::string>{"GET /healthz", "GET " + r4 + "/metadata"}));
  const std::map<std::string, std::string> expected = {
      {"GET " + r4 + "/$export", "healthlake:StartFHIRExportJobWithGet"},
      {"GET " + r4 + "/Patient/$export", "healthlake:StartFHIRExportJobWithGet"},
      {"GET " + r4 + "/Group/{id}/$export", "healthlake:StartFHIRExportJobWithGet"},
      {"POST " + r4 + "/$export", "healthlake:StartFHIRExportJobWithPost"},
      {"GET " + r4 + "/$export-poll-status/{job}", "healthlake:DescribeFHIRExportJobWithGet"},
      {"DELETE " + r4 + "/$export-poll-status/{job}", "healthlake:CancelFHIRExportJobWithDelete"},
      {"GET " + r4 + "/$export-file/{job}/{type}/{file}", "healthlake:GetExportedFile"},
      {"GET " + r4 + "/export/{job}", "healthlake:DescribeFHIRExportJobWithGet"},
      {"DELETE " + r4 + "/export/{job}", "healthlake:CancelFHIRExportJobWithDelete"},
      {"GET " + r4 + "/OperationDefinition/export", "healthlake:ReadResource"},
      {"GET " + r4 + "/{type}/{id}", "healthlake:ReadResource"},
      {"POST " + r4 + "/{type}", "healthlake:CreateResource"},
      {"PUT " + r4 + "/{type}/{id}", "healthlake:UpdateResource"},
      {"DELETE " + r4 + "/{type}/{id}", "healthlake:DeleteResource"},
      {"GET " + r4 + "/{type}", "healthlake:SearchWithGet"},
      {"POST " + r4 + "/{type}/_search", "healthlake:SearchWithPost"},
      {"* " + r4 + "/metadata", "healthlake:GetCapabilities"},
  };
  for (const auto& [name, action] : expected) {
    ASSERT_TRUE(actions.count(name)) << name << " is not routed";
    EXPECT_EQ(actions[name], action) << name;
  }
  EXPECT_GT(actions.size(), expected.size() + 10);  // the FHIR REST and search routes too
}

}  // namespace
}  // namespace fhirlake::api
