// Tests for the SQLite ResourceStore and DatastoreCatalog (src/store/resource_store.h, sqlite_store.cc,
// sqlite_schema.h), each against a real database in a fresh temporary data directory.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <simdjson.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/ids.h"
#include "common/time.h"
#include "fhir/resource_parser.h"
#include "search/query.h"
#include "store/resource_store.h"
#include "store/sqlite_db.h"
#include "store/sqlite_schema.h"
#include "test_util.h"

namespace fhirlake::store {
namespace {

namespace fs = std::filesystem;
using ::fhirlake::testutil::TempDir;

// A snapshot of everything committed so far (what an export starting now would take).
Snapshot NowSnapshot(ResourceStore* store) {
  auto snap = store->TakeSnapshot();
  EXPECT_TRUE(snap.ok()) << snap.status().ToString();
  return snap.ok() ? *snap : Snapshot{};
}
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;

// What a scanned row holds, read back from its JSON.
struct Row {
  int64_t rid = 0;
  std::string type;
  std::string id;
  std::string version;
};

Row RowFromJson(int64_t rid, std::string_view json) {
  simdjson::dom::parser parser;
  simdjson::dom::element doc;
  Row row;
  row.rid = rid;
  auto error = parser.parse(simdjson::padded_string(json)).get(doc);
  EXPECT_EQ(error, simdjson::SUCCESS) << json;
  if (error) return row;
  std::string_view s;
  if (!doc["resourceType"].get_string().get(s)) row.type = std::string(s);
  if (!doc["id"].get_string().get(s)) row.id = std::string(s);
  if (!doc.at_pointer("/meta/versionId").get_string().get(s)) row.version = std::string(s);
  return row;
}

std::string Ref(const Row& r) { return r.type + "/" + r.id + "@" + r.version; }

// prefix + number (appending, which also keeps GCC 12's -Wrestrict false positive on "lit" + string away).
std::string Id(std::string_view prefix, int i) {
  std::string s(prefix);
  s.append(std::to_string(i));
  return s;
}

class SqliteStoreTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_NO_FATAL_FAILURE(OpenCatalog()); }

  void OpenCatalog() {
    catalog_.reset();
    StoreOptions options;
    options.data_dir = tmp_.str();
    options.busy_timeout_ms = 5000;
    options.scope_chunk_rows = scope_chunk_rows_;
    auto catalog = OpenSqliteCatalog(options);
    ASSERT_OK(catalog);
    catalog_ = std::move(catalog).value();
    store_ = catalog_->Default();
    ASSERT_NE(store_, nullptr);
  }

  Result<fhir::ParsedResource> ParseJson(std::string_view json) { return parser_.Parse(json, nullptr); }

  Result<StoredResource> Put(std::string_view json, std::string_view id, std::optional<int64_t> if_match = {}) {
    ASSIGN_OR_RETURN(fhir::ParsedResource parsed, ParseJson(json));
    ASSIGN_OR_RETURN(auto txn, store_->BeginWrite());
    ASSIGN_OR_RETURN(StoredResource stored, txn->Put(parsed, id, if_match));
    RETURN_IF_ERROR(txn->Commit());
    return stored;
  }

  Result<StoredResource> Delete(std::string_view type, std::string_view id, std::optional<int64_t> if_match = {}) {
    ASSIGN_OR_RETURN(auto txn, store_->BeginWrite());
    ASSIGN_OR_RETURN(StoredResource stored, txn->Delete(type, id, if_match));
    RETURN_IF_ERROR(txn->Commit());
    return stored;
  }

  // Puts a resource whose JSON is built from type, id and extra members; fails the test on error.
  StoredResource MustPut(const std::string& type, const std::string& id, const std::string& members = "") {
    std::string json = R"({"resourceType":")" + type + R"(","id":")" + id + "\"";
    if (!members.empty()) json += "," + members;
    json += "}";
    auto r = Put(json, id);
    EXPECT_TRUE(r.ok()) << json << ": " << r.status().ToString();
    return r.ok() ? std::move(r).value() : StoredResource{};
  }

  // Pages through a whole Scan with `max_rows` per call, checking the paging invariants on the way.
  std::vector<Row> ScanAll(ScanRequest req, int* calls = nullptr) {
    std::vector<Row> rows;
    std::set<int64_t> seen;
    int n = 0;
    for (;;) {
      ++n;
      if (n > 10000) {
        ADD_FAILURE() << "Scan does not terminate";
        break;
      }
      size_t in_call = 0;
      auto progress = store_->Scan(req, [&](const ScanRow& row) {
        ++in_call;
        EXPECT_GT(row.rid, req.after_rid);
        EXPECT_LE(row.rid, req.max_rid);
        EXPECT_TRUE(seen.insert(row.rid).second) << "rid " << row.rid << " returned twice";
        rows.push_back(RowFromJson(row.rid, row.json));
        return Status::Ok();
      });
      EXPECT_TRUE(progress.ok()) << progress.status().ToString();
      if (!progress.ok()) break;
      EXPECT_LE(in_call, req.max_rows);
      EXPECT_GE(progress->last_rid, req.after_rid);
      if (progress->exhausted) break;
      EXPECT_GT(progress->last_rid, req.after_rid) << "a call that is not exhausted must make progress";
      req.after_rid = progress->last_rid;
    }
    if (calls) *calls = n;
    return rows;
  }

  std::vector<std::string> ScanRefs(const ScanRequest& req) {
    std::vector<std::string> out;
    for (const auto& r : ScanAll(req)) out.push_back(Ref(r));
    return out;
  }

  ScanRequest Request(const std::string& type, const Snapshot& snap, ScanScope scope = ScanScope::kAll) {
    ScanRequest req;
    req.type = type;
    req.scope = scope;
    req.snapshot = snap;
    return req;
  }

  Snapshot MustSnapshot() {
    auto snap = store_->TakeSnapshot();
    EXPECT_TRUE(snap.ok()) << snap.status().ToString();
    return snap.ok() ? *snap : Snapshot{};
  }

  int scope_chunk_rows_ = 500;
  TempDir tmp_;
  std::unique_ptr<DatastoreCatalog> catalog_;
  ResourceStore* store_ = nullptr;
  fhir::ResourceParser parser_;
};

// --- catalog ---

TEST_F(SqliteStoreTest, DefaultDatastoreIsCreated) {
  const DatastoreInfo& info = store_->info();
  EXPECT_TRUE(IsHexId(info.id)) << info.id;
  EXPECT_EQ(info.name, "fhirlake-default");
  EXPECT_EQ(info.path, (tmp_.path() / "datastores" / info.id / "fhir.db").string());
  EXPECT_TRUE(fs::exists(info.path));
  EXPECT_GT(info.created_at, 0);
  EXPECT_LE(info.created_at, Clock::System().NowMillis());
  ASSERT_EQ(catalog_->All().size(), 1u);
  EXPECT_EQ(catalog_->All()[0], store_);
  EXPECT_EQ(catalog_->Find(info.id), store_);
  EXPECT_EQ(catalog_->Find("00000000000000000000000000000000"), nullptr);
  auto count = store_->CountCurrent();
  ASSERT_OK(count);
  EXPECT_EQ(*count, 0);
}

TEST_F(SqliteStoreTest, ReopenKeepsTheDatastoreIdentityAndData) {
  const DatastoreInfo before = store_->info();
  MustPut("Patient", "p1");
  ASSERT_NO_FATAL_FAILURE(OpenCatalog());
  EXPECT_EQ(catalog_->All().size(), 1u);
  EXPECT_EQ(store_->info().id, before.id);
  EXPECT_EQ(store_->info().name, before.name);
  EXPECT_EQ(store_->info().created_at, before.created_at);
  EXPECT_EQ(store_->info().path, before.path);
  auto r = store_->Read("Patient", "p1");
  ASSERT_OK(r);
  EXPECT_EQ(r->version, 1);
}

TEST(SqliteCatalogTest, CustomDefaultName) {
  TempDir tmp;
  StoreOptions options;
  options.data_dir = tmp.str();
  options.default_datastore_name = "my store";
  auto catalog = OpenSqliteCatalog(options);
  ASSERT_OK(catalog);
  EXPECT_EQ((*catalog)->Default()->info().name, "my store");
}

// --- writes, reads, versions ---

TEST_F(SqliteStoreTest, PutCreatesVersionOne) {
  auto r = Put(R"({"resourceType":"Patient","id":"p1","gender":"female"})", "p1");
  ASSERT_OK(r);
  EXPECT_GT(r->rid, 0);
  EXPECT_EQ(r->type, "Patient");
  EXPECT_EQ(r->id, "p1");
  EXPECT_EQ(r->version, 1);
  EXPECT_GT(r->seq, 0);
  EXPECT_FALSE(r->deleted);
  EXPECT_EQ(r->json, R"({"resourceType":"Patient","id":"p1","meta":{"versionId":"1","lastUpdated":")" +
                         FormatInstant(r->last_updated) + R"("},"gender":"female"})");

  auto read = store_->Read("Patient", "p1");
  ASSERT_OK(read);
  EXPECT_EQ(read->rid, r->rid);
  EXPECT_EQ(read->version, 1);
  EXPECT_EQ(read->seq, r->seq);
  EXPECT_EQ(read->last_updated, r->last_updated);
  EXPECT_FALSE(read->deleted);
  EXPECT_EQ(read->json, r->json);
  auto count = store_->CountCurrent();
  ASSERT_OK(count);
  EXPECT_EQ(*count, 1);
}

TEST_F(SqliteStoreTest, ReadUnknownIsNotFound) {
  EXPECT_STATUS(store_->Read("Patient", "nope"), kNotFound, "Patient/nope");
  MustPut("Patient", "p1");
  EXPECT_STATUS(store_->Read("Observation", "p1"), kNotFound, "Observation/p1");
  EXPECT_STATUS(store_->History("Patient", "nope"), kNotFound, "Patient/nope");
  EXPECT_STATUS(store_->ReadVersion("Patient", "nope", 1), kNotFound, "Patient/nope");
}

TEST_F(SqliteStoreTest, UpdateCreatesVersionTwoWithHistory) {
  StoredResource v1 = MustPut("Patient", "p1", R"("gender":"female")");
  StoredResource v2 = MustPut("Patient", "p1", R"("gender":"male")");
  EXPECT_EQ(v2.rid, v1.rid);
  EXPECT_EQ(v2.version, 2);
  EXPECT_GT(v2.seq, v1.seq);
  EXPECT_GE(v2.last_updated, v1.last_updated);
  EXPECT_THAT(v2.json, ::testing::HasSubstr(R"("versionId":"2")"));
  EXPECT_THAT(v2.json, ::testing::HasSubstr(R"("gender":"male")"));

  auto current = store_->Read("Patient", "p1");
  ASSERT_OK(current);
  EXPECT_EQ(current->version, 2);
  EXPECT_EQ(current->json, v2.json);

  auto old = store_->ReadVersion("Patient", "p1", 1);
  ASSERT_OK(old);
  EXPECT_EQ(old->rid, v1.rid);
  EXPECT_EQ(old->type, "Patient");
  EXPECT_EQ(old->id, "p1");
  EXPECT_EQ(old->version, 1);
  EXPECT_EQ(old->seq, v1.seq);
  EXPECT_EQ(old->last_updated, v1.last_updated);
  EXPECT_EQ(old->json, v1.json);
  auto latest = store_->ReadVersion("Patient", "p1", 2);
  ASSERT_OK(latest);
  EXPECT_EQ(latest->json, v2.json);
  EXPECT_STATUS(store_->ReadVersion("Patient", "p1", 3), kNotFound, "Version 3");
  EXPECT_STATUS(store_->ReadVersion("Patient", "p1", 0), kNotFound, "Version 0");

  auto count = store_->CountCurrent();
  ASSERT_OK(count);
  EXPECT_EQ(*count, 1);
}

TEST_F(SqliteStoreTest, HistoryIsNewestFirst) {
  std::vector<StoredResource> puts;
  for (int i = 0; i < 4; ++i) puts.push_back(MustPut("Observation", "o1", Id(R"("status":"s)", i) + "\""));
  auto h = store_->History("Observation", "o1");
  ASSERT_OK(h);
  ASSERT_EQ(h->size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    const StoredResource& got = (*h)[i];
    const StoredResource& want = puts[3 - i];
    EXPECT_EQ(got.version, static_cast<int64_t>(4 - i));
    EXPECT_EQ(got.rid, want.rid);
    EXPECT_EQ(got.seq, want.seq);
    EXPECT_EQ(got.json, want.json);
    EXPECT_FALSE(got.deleted);
  }
}

TEST_F(SqliteStoreTest, DeleteWritesATombstone) {
  StoredResource v1 = MustPut("Patient", "p1");
  auto d = Delete("Patient", "p1");
  ASSERT_OK(d);
  EXPECT_TRUE(d->deleted);
  EXPECT_EQ(d->version, 2);
  EXPECT_EQ(d->rid, v1.rid);
  EXPECT_GT(d->seq, v1.seq);
  EXPECT_TRUE(d->json.empty());

  auto read = store_->Read("Patient", "p1");
  ASSERT_OK(read);
  EXPECT_TRUE(read->deleted);
  EXPECT_EQ(read->version, 2);
  EXPECT_TRUE(read->json.empty());

  auto h = store_->History("Patient", "p1");
  ASSERT_OK(h);
  ASSERT_EQ(h->size(), 2u);
  EXPECT_TRUE((*h)[0].deleted);
  EXPECT_EQ((*h)[0].version, 2);
  EXPECT_FALSE((*h)[1].deleted);
  EXPECT_EQ((*h)[1].json, v1.json);

  auto count = store_->CountCurrent();
  ASSERT_OK(count);
  EXPECT_EQ(*count, 0);
}

TEST_F(SqliteStoreTest, DeleteAgainIsNotAnErrorAndKeepsTheVersion) {
  MustPut("Patient", "p1");
  ASSERT_OK(Delete("Patient", "p1"));
  auto again = Delete("Patient", "p1");
  ASSERT_OK(again);
  EXPECT_TRUE(again->deleted);
  EXPECT_EQ(again->version, 2);
  auto h = store_->History("Patient", "p1");
  ASSERT_OK(h);
  EXPECT_EQ(h->size(), 2u);
}

TEST_F(SqliteStoreTest, DeleteOfANeverCreatedResourceIsNotFound) {
  EXPECT_STATUS(Delete("Patient", "ghost"), kNotFound, "Patient/ghost");
}

TEST_F(SqliteStoreTest, PutAfterDeleteContinuesTheVersions) {
  StoredResource v1 = MustPut("Patient", "p1", R"("gender":"female")");
  ASSERT_OK(Delete("Patient", "p1"));
  StoredResource v3 = MustPut("Patient", "p1", R"("gender":"other")");
  EXPECT_EQ(v3.version, 3);
  EXPECT_EQ(v3.rid, v1.rid);
  EXPECT_FALSE(v3.deleted);
  EXPECT_THAT(v3.json, ::testing::HasSubstr(R"("versionId":"3")"));
  auto read = store_->Read("Patient", "p1");
  ASSERT_OK(read);
  EXPECT_FALSE(read->deleted);
  EXPECT_EQ(read->version, 3);
  auto tomb = store_->ReadVersion("Patient", "p1", 2);
  ASSERT_OK(tomb);
  EXPECT_TRUE(tomb->deleted);
  auto h = store_->History("Patient", "p1");
  ASSERT_OK(h);
  ASSERT_EQ(h->size(), 3u);
  EXPECT_EQ((*h)[0].version, 3);
  EXPECT_EQ((*h)[1].version, 2);
  EXPECT_EQ((*h)[2].version, 1);
}

TEST_F(SqliteStoreTest, IfMatch) {
  MustPut("Patient", "p1");
  EXPECT_STATUS(Put(R"({"resourceType":"Patient"})", "p1", 2), kPreconditionFailed, "current version is 1");
  auto ok = Put(R"({"resourceType":"Patient","active":true})", "p1", 1);
  ASSERT_OK(ok);
  EXPECT_EQ(ok->version, 2);
  EXPECT_STATUS(Put(R"({"resourceType":"Patient"})", "new", 1), kPreconditionFailed, "Patient/new");
  EXPECT_STATUS(store_->Read("Patient", "new"), kNotFound, "");
  EXPECT_STATUS(Delete("Patient", "p1", 1), kPreconditionFailed, "current version is 2");
  auto d = Delete("Patient", "p1", 2);
  ASSERT_OK(d);
  EXPECT_EQ(d->version, 3);
  // The failed attempts changed nothing.
  auto h = store_->History("Patient", "p1");
  ASSERT_OK(h);
  EXPECT_EQ(h->size(), 3u);
}

TEST_F(SqliteStoreTest, TransactionWithoutCommitRollsBack) {
  auto parsed = ParseJson(R"({"resourceType":"Patient","id":"p1"})");
  ASSERT_OK(parsed);
  {
    auto txn = store_->BeginWrite();
    ASSERT_OK(txn);
    ASSERT_OK((*txn)->Put(*parsed, "p1", std::nullopt));
    auto inside = (*txn)->Read("Patient", "p1");
    ASSERT_OK(inside);
    EXPECT_EQ(inside->version, 1);
  }
  EXPECT_STATUS(store_->Read("Patient", "p1"), kNotFound, "");
  // The writer lock was released: a new transaction can start.
  ASSERT_OK(Put(R"({"resourceType":"Patient"})", "p1"));
}

TEST_F(SqliteStoreTest, WritesOfOneTransactionShareSeqAndLastUpdated) {
  auto a = ParseJson(R"({"resourceType":"Patient"})");
  auto b = ParseJson(R"({"resourceType":"Observation","subject":{"reference":"Patient/a"}})");
  ASSERT_OK(a);
  ASSERT_OK(b);
  auto txn = store_->BeginWrite();
  ASSERT_OK(txn);
  auto ra = (*txn)->Put(*a, "a", std::nullopt);
  auto rb = (*txn)->Put(*b, "b", std::nullopt);
  ASSERT_OK(ra);
  ASSERT_OK(rb);
  EXPECT_EQ(ra->seq, (*txn)->seq());
  EXPECT_EQ(rb->seq, (*txn)->seq());
  EXPECT_EQ(ra->last_updated, (*txn)->last_updated());
  EXPECT_EQ(rb->last_updated, (*txn)->last_updated());
  EXPECT_NE(ra->rid, rb->rid);
  ASSERT_OK((*txn)->Commit());
  txn->reset();
  StoredResource c = MustPut("Patient", "c");
  EXPECT_GT(c.seq, ra->seq);
  EXPECT_GE(c.last_updated, ra->last_updated);
}

TEST_F(SqliteStoreTest, FindByIdentifier) {
  MustPut("Patient", "a", R"("identifier":[{"system":"urn:s1","value":"v1"},{"system":"urn:s1","value":"va"}])");
  MustPut("Patient", "b", R"("identifier":[{"system":"urn:s2","value":"v1"}])");
  MustPut("Patient", "c", R"("identifier":[{"value":"v1"}])");
  MustPut("Observation", "o", R"("identifier":[{"system":"urn:s1","value":"v1"}])");
  auto txn = store_->BeginWrite();
  ASSERT_OK(txn);
  auto& t = **txn;
  auto r = t.FindByIdentifier("Patient", "urn:s1", "v1");
  ASSERT_OK(r);
  EXPECT_THAT(*r, ElementsAre("a"));
  r = t.FindByIdentifier("Patient", "", "v1");  // any system
  ASSERT_OK(r);
  EXPECT_THAT(*r, ElementsAre("a", "b", "c"));
  r = t.FindByIdentifier("Patient", "urn:s1", "va");
  ASSERT_OK(r);
  EXPECT_THAT(*r, ElementsAre("a"));
  r = t.FindByIdentifier("Patient", "urn:s3", "v1");
  ASSERT_OK(r);
  EXPECT_THAT(*r, IsEmpty());
  r = t.FindByIdentifier("Observation", "", "v1");
  ASSERT_OK(r);
  EXPECT_THAT(*r, ElementsAre("o"));
  r = t.FindByIdentifier("Encounter", "", "v1");
  ASSERT_OK(r);
  EXPECT_THAT(*r, IsEmpty());

  // Deleted resources and replaced identifiers are not found, in the same transaction too.
  ASSERT_OK(t.Delete("Patient", "a", std::nullopt));
  auto b2 = ParseJson(R"({"resourceType":"Patient","identifier":[{"system":"urn:s2","value":"v2"}]})");
  ASSERT_OK(b2);
  ASSERT_OK(t.Put(*b2, "b", std::nullopt));
  r = t.FindByIdentifier("Patient", "", "v1");
  ASSERT_OK(r);
  EXPECT_THAT(*r, ElementsAre("c"));
  r = t.FindByIdentifier("Patient", "urn:s2", "v2");
  ASSERT_OK(r);
  EXPECT_THAT(*r, ElementsAre("b"));
  ASSERT_OK(t.Commit());
}

TEST_F(SqliteStoreTest, CompartmentsOfAndReadCompartment) {
  StoredResource p1 = MustPut("Patient", "p1");
  MustPut("Patient", "p2");
  StoredResource o1 =
      MustPut("Observation", "o1", R"("subject":{"reference":"Patient/p1"},"performer":[{"reference":"Patient/p2"}])");
  StoredResource e1 = MustPut("Encounter", "e1", R"("subject":{"reference":"Patient/p1"})");
  MustPut("Practitioner", "d1");
  MustPut("Observation", "o2", R"("subject":{"reference":"Patient/p2"})");

  auto c = store_->CompartmentsOf("Observation", "o1");
  ASSERT_OK(c);
  EXPECT_THAT(*c, ElementsAre("p1", "p2"));
  c = store_->CompartmentsOf("Patient", "p1");
  ASSERT_OK(c);
  EXPECT_THAT(*c, ElementsAre("p1"));
  c = store_->CompartmentsOf("Practitioner", "d1");
  ASSERT_OK(c);
  EXPECT_THAT(*c, IsEmpty());
  EXPECT_STATUS(store_->CompartmentsOf("Observation", "nope"), kNotFound, "Observation/nope");

  auto all = store_->ReadCompartment("p1", "");
  ASSERT_OK(all);
  ASSERT_EQ(all->size(), 3u);
  EXPECT_EQ((*all)[0].rid, p1.rid);  // storage order
  EXPECT_EQ((*all)[1].rid, o1.rid);
  EXPECT_EQ((*all)[2].rid, e1.rid);
  EXPECT_EQ((*all)[1].json, o1.json);
  auto obs = store_->ReadCompartment("p1", "Observation");
  ASSERT_OK(obs);
  ASSERT_EQ(obs->size(), 1u);
  EXPECT_EQ((*obs)[0].id, "o1");
  auto p2obs = store_->ReadCompartment("p2", "Observation");
  ASSERT_OK(p2obs);
  ASSERT_EQ(p2obs->size(), 2u);
  EXPECT_EQ((*p2obs)[0].id, "o1");
  EXPECT_EQ((*p2obs)[1].id, "o2");
  auto none = store_->ReadCompartment("nobody", "");
  ASSERT_OK(none);
  EXPECT_THAT(*none, IsEmpty());

  // An update moves the resource to the compartments of its new content.
  MustPut("Encounter", "e1", R"("subject":{"reference":"Patient/p2"})");
  c = store_->CompartmentsOf("Encounter", "e1");
  ASSERT_OK(c);
  EXPECT_THAT(*c, ElementsAre("p2"));
  // Deleted resources are not read.
  ASSERT_OK(Delete("Observation", "o1"));
  all = store_->ReadCompartment("p1", "");
  ASSERT_OK(all);
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].id, "p1");
}

// --- snapshots and scans ---

TEST_F(SqliteStoreTest, TakeSnapshotOrdersWrites) {
  StoredResource before = MustPut("Patient", "a");
  auto snap = store_->TakeSnapshot();
  ASSERT_OK(snap);
  EXPECT_EQ(snap->seq, before.seq);  // every commit so far, nothing else
  EXPECT_GE(snap->time, before.last_updated);
  StoredResource after = MustPut("Patient", "b");
  EXPECT_GT(after.seq, snap->seq);
  EXPECT_GE(after.last_updated, snap->time);
  auto later = store_->TakeSnapshot();
  ASSERT_OK(later);
  EXPECT_EQ(later->seq, after.seq);
}

TEST_F(SqliteStoreTest, ScanWithASnapshotSeesTheResourcesAsOfTheSnapshot) {
  MustPut("Patient", "p1", R"("gender":"female")");
  MustPut("Patient", "p2");
  MustPut("Patient", "p3");
  MustPut("Patient", "gone");
  ASSERT_OK(Delete("Patient", "gone"));
  MustPut("Patient", "back");
  ASSERT_OK(Delete("Patient", "back"));
  Snapshot snap = MustSnapshot();

  MustPut("Patient", "p1", R"("gender":"male")");  // updated twice after the snapshot
  MustPut("Patient", "p1", R"("gender":"other")");
  ASSERT_OK(Delete("Patient", "p2"));  // deleted after the snapshot
  MustPut("Patient", "p4");            // created after the snapshot
  MustPut("Patient", "back");          // re-created after the snapshot
  MustPut("Patient", "p3");
  ASSERT_OK(Delete("Patient", "p3"));
  MustPut("Patient", "p3");  // deleted and re-created after the snapshot

  EXPECT_THAT(ScanRefs(Request("Patient", snap)), ElementsAre("Patient/p1@1", "Patient/p2@1", "Patient/p3@1"));
  // The old version's bytes are the ones returned.
  std::vector<std::string> bodies;
  auto progress = store_->Scan(Request("Patient", snap), [&](const ScanRow& row) {
    bodies.emplace_back(row.json);
    return Status::Ok();
  });
  ASSERT_OK(progress);
  ASSERT_EQ(bodies.size(), 3u);
  auto p1v1 = store_->ReadVersion("Patient", "p1", 1);
  ASSERT_OK(p1v1);
  EXPECT_EQ(bodies[0], p1v1->json);
  EXPECT_THAT(bodies[0], ::testing::HasSubstr(R"("gender":"female")"));

  Snapshot now = MustSnapshot();
  EXPECT_THAT(ScanRefs(Request("Patient", now)),
              ElementsAre("Patient/p1@3", "Patient/p3@4", "Patient/back@3", "Patient/p4@1"));
}

TEST_F(SqliteStoreTest, ScanOnlyReturnsTheRequestedType) {
  MustPut("Patient", "p1");
  MustPut("Observation", "o1");
  MustPut("Patient", "p2");
  Snapshot snap = MustSnapshot();
  EXPECT_THAT(ScanRefs(Request("Patient", snap)), ElementsAre("Patient/p1@1", "Patient/p2@1"));
  EXPECT_THAT(ScanRefs(Request("Observation", snap)), ElementsAre("Observation/o1@1"));
  EXPECT_THAT(ScanRefs(Request("Encounter", snap)), IsEmpty());
}

TEST_F(SqliteStoreTest, ScanKeysetPagingVisitsEveryRowOnce) {
  std::vector<std::string> expected;
  for (int i = 0; i < 25; ++i) {
    std::string id = Id("o", i);
    MustPut("Observation", id);
    MustPut("Patient", Id("p", i));  // interleaved rows of another type
    if (i % 5 == 3) {
      ASSERT_OK(Delete("Observation", id));  // skipped rows still advance the cursor
    } else {
      expected.push_back("Observation/" + id + "@1");
    }
  }
  Snapshot snap = MustSnapshot();
  for (size_t max_rows : {1u, 2u, 4u, 5u, 7u, 25u, 1000u}) {
    ScanRequest req = Request("Observation", snap);
    req.max_rows = max_rows;
    int calls = 0;
    std::vector<std::string> got;
    for (const auto& r : ScanAll(req, &calls)) got.push_back(Ref(r));
    EXPECT_EQ(got, expected) << "max_rows " << max_rows;
    // 25 rows examined: ceil(25 / max_rows) calls, plus one that finds nothing when the last page is full.
    EXPECT_EQ(calls, static_cast<int>(25 / max_rows) + 1) << "max_rows " << max_rows;
  }
}

TEST_F(SqliteStoreTest, ScanReportsExhaustedOnlyAtTheEnd) {
  for (int i = 0; i < 10; ++i) MustPut("Patient", Id("p", i));
  Snapshot snap = MustSnapshot();
  ScanRequest req = Request("Patient", snap);
  req.max_rows = 3;
  std::vector<std::pair<size_t, bool>> pages;  // (rows, exhausted)
  for (int guard = 0; guard < 20; ++guard) {
    size_t rows = 0;
    auto progress = store_->Scan(req, [&](const ScanRow&) {
      ++rows;
      return Status::Ok();
    });
    ASSERT_OK(progress);
    pages.emplace_back(rows, progress->exhausted);
    if (progress->exhausted) break;
    req.after_rid = progress->last_rid;
  }
  EXPECT_THAT(pages, ElementsAre(std::pair<size_t, bool>{3, false}, std::pair<size_t, bool>{3, false},
                                 std::pair<size_t, bool>{3, false}, std::pair<size_t, bool>{1, true}));
  // Past the end: nothing, exhausted.
  auto last = store_->Scan(req, [](const ScanRow&) { return Status::Ok(); });
  ASSERT_OK(last);
  req.after_rid = last->last_rid;
  size_t rows = 0;
  auto progress = store_->Scan(req, [&](const ScanRow&) {
    ++rows;
    return Status::Ok();
  });
  ASSERT_OK(progress);
  EXPECT_EQ(rows, 0u);
  EXPECT_TRUE(progress->exhausted);
  EXPECT_EQ(progress->last_rid, req.after_rid);
}

TEST_F(SqliteStoreTest, ScanStopsAtMaxBytes) {
  for (int i = 0; i < 5; ++i) MustPut("Patient", Id("p", i));
  Snapshot snap = MustSnapshot();
  ScanRequest req = Request("Patient", snap);
  req.max_bytes = 1;  // every row is over the budget: one row per call
  int calls = 0;
  auto rows = ScanAll(req, &calls);
  EXPECT_EQ(rows.size(), 5u);
  EXPECT_EQ(calls, 6);  // one row per call, then one call that finds the range exhausted
}

TEST_F(SqliteStoreTest, ScanRespectsTheRidRange) {
  std::vector<int64_t> rids;
  for (int i = 0; i < 10; ++i) rids.push_back(MustPut("Patient", Id("p", i)).rid);
  Snapshot snap = MustSnapshot();
  auto range = store_->RangeOf("Patient", ScanScope::kAll, "");
  ASSERT_OK(range);
  EXPECT_EQ(range->rows, 10);
  EXPECT_EQ(range->min_rid, rids.front());
  EXPECT_EQ(range->max_rid, rids.back());
  // Two task ranges (min-1, mid] and (mid, max] cover everything once.
  ScanRequest first = Request("Patient", snap);
  first.after_rid = range->min_rid - 1;
  first.max_rid = rids[4];
  first.max_rows = 2;
  ScanRequest second = Request("Patient", snap);
  second.after_rid = rids[4];
  second.max_rid = range->max_rid;
  second.max_rows = 2;
  auto a = ScanAll(first);
  auto b = ScanAll(second);
  ASSERT_EQ(a.size(), 5u);
  ASSERT_EQ(b.size(), 5u);
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_EQ(a[i].rid, rids[i]);
    EXPECT_EQ(b[i].rid, rids[5 + i]);
  }
}

TEST_F(SqliteStoreTest, ScanCallbackErrorStopsTheScan) {
  for (int i = 0; i < 3; ++i) MustPut("Patient", Id("p", i));
  Snapshot snap = MustSnapshot();
  int rows = 0;
  auto progress = store_->Scan(Request("Patient", snap), [&](const ScanRow&) {
    ++rows;
    return Status::Unavailable("sink is down");
  });
  EXPECT_STATUS(progress, kUnavailable, "sink is down");
  EXPECT_EQ(rows, 1);
  // The store still works afterwards.
  EXPECT_EQ(ScanAll(Request("Patient", snap)).size(), 3u);
}

TEST_F(SqliteStoreTest, ScanSinceFiltersByLastUpdated) {
  StoredResource a = MustPut("Patient", "a");
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  StoredResource b = MustPut("Patient", "b");
  ASSERT_GT(b.last_updated, a.last_updated);
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  StoredResource c = MustPut("Patient", "c");
  ASSERT_GT(c.last_updated, b.last_updated);
  Snapshot snap = MustSnapshot();

  ScanRequest req = Request("Patient", snap);
  req.since = b.last_updated;  // inclusive
  EXPECT_THAT(ScanRefs(req), ElementsAre("Patient/b@1", "Patient/c@1"));
  req.since = c.last_updated + 1;
  EXPECT_THAT(ScanRefs(req), IsEmpty());
  req.since = 0;
  EXPECT_THAT(ScanRefs(req), ElementsAre("Patient/a@1", "Patient/b@1", "Patient/c@1"));

  // `a` is updated after the snapshot: its current lastUpdated is after `since`, but the version as of the
  // snapshot is older than `since`, so it is still left out.
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  MustPut("Patient", "a", R"("active":true)");
  req.since = b.last_updated;
  EXPECT_THAT(ScanRefs(req), ElementsAre("Patient/b@1", "Patient/c@1"));
  // With a new snapshot, the new version of `a` is in.
  req.snapshot = MustSnapshot();
  EXPECT_THAT(ScanRefs(req), ElementsAre("Patient/a@2", "Patient/b@1", "Patient/c@1"));
}

TEST_F(SqliteStoreTest, TypeFilterMatchesAreTheSnapshots) {
  MustPut("Patient", "p1", R"("gender":"female")");
  MustPut("Patient", "p2", R"("gender":"male")");
  MustPut("Patient", "p3", R"("gender":"female")");
  MustPut("Patient", "p4", R"("gender":"female")");
  ASSERT_OK(Delete("Patient", "p4"));
  ASSERT_OK_AND_ASSIGN(auto female, search::ParseSearchQuery({"Patient"}, {{"gender", "female"}}, "", false));
  ASSERT_OK_AND_ASSIGN(auto male, search::ParseSearchQuery({"Patient"}, {{"gender", "male"}}, "", false));
  // A stale list from an interrupted earlier start is replaced.
  ASSERT_OK(store_->TakeSnapshotWithFilters("job1", {{"Patient", {male}}}));
  ASSERT_OK_AND_ASSIGN(Snapshot snap, store_->TakeSnapshotWithFilters("job1", {{"Patient", {female}}}));
  MustPut("Patient", "p1", R"("gender":"male")");    // stops matching after the snapshot: still exported (v1)
  MustPut("Patient", "p2", R"("gender":"female")");  // starts matching after the snapshot: not exported
  MustPut("Patient", "p5", R"("gender":"female")");  // created after the snapshot
  ScanRequest req = Request("Patient", snap);
  req.filter_key = FilterScopeKey("job1");
  EXPECT_THAT(ScanRefs(req), ElementsAre("Patient/p1@1", "Patient/p3@1"));
  ASSERT_OK_AND_ASSIGN(TypeRange range, store_->RangeOf("Patient", ScanScope::kJobScope, FilterScopeKey("job1")));
  EXPECT_EQ(range.rows, 2);
  // Two queries for one type are OR-ed.
  ASSERT_OK_AND_ASSIGN(Snapshot both, store_->TakeSnapshotWithFilters("job2", {{"Patient", {female, male}}}));
  req = Request("Patient", both);
  req.filter_key = FilterScopeKey("job2");
  EXPECT_THAT(ScanRefs(req), ElementsAre("Patient/p1@2", "Patient/p2@2", "Patient/p3@1", "Patient/p5@1"));
  // The list is scratch: dropped with the job's other scratch rows.
  ASSERT_OK(store_->jobs().DropJobScratch("job2"));
  EXPECT_THAT(ScanRefs(req), IsEmpty());
}

TEST_F(SqliteStoreTest, ScanOfTombstonesListsTheDeletionsSinceAsOfTheSnapshot) {
  MustPut("Patient", "early");
  ASSERT_OK(Delete("Patient", "early"));  // before since
  MustPut("Patient", "b");
  MustPut("Patient", "c");
  MustPut("Patient", "d");
  MustPut("Patient", "f");
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  const EpochMillis since = Clock::System().NowMillis();
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_OK(Delete("Patient", "b"));
  ASSERT_OK(Delete("Patient", "c"));
  MustPut("Patient", "c");  // re-created: live at the snapshot
  MustPut("Patient", "e");
  ASSERT_OK(Delete("Patient", "e"));  // created and deleted since
  ASSERT_OK(Delete("Patient", "f"));
  Snapshot snap = MustSnapshot();
  ASSERT_OK(Delete("Patient", "d"));  // after the snapshot: live then
  MustPut("Patient", "f");            // re-created after the snapshot: a tombstone then
  ScanRequest req = Request("Patient", snap);
  req.tombstones = true;
  req.since = since;
  std::vector<std::string> ids;
  for (;;) {
    ASSERT_OK_AND_ASSIGN(auto progress, store_->Scan(req, [&](const ScanRow& row) {
      EXPECT_TRUE(row.json.empty());
      ids.emplace_back(row.id);
      return Status::Ok();
    }));
    if (progress.exhausted) break;
    req.after_rid = progress.last_rid;
  }
  EXPECT_THAT(ids, ElementsAre("b", "f", "e"));  // rid order
  req.since.reset();
  req.after_rid = 0;
  EXPECT_STATUS(store_->Scan(req, [](const ScanRow&) { return Status::Ok(); }), kInvalid, "_since");
}

TEST_F(SqliteStoreTest, RangeOf) {
  auto empty = store_->RangeOf("Patient", ScanScope::kAll, "");
  ASSERT_OK(empty);
  EXPECT_EQ(empty->rows, 0);
  EXPECT_EQ(empty->min_rid, 0);
  EXPECT_EQ(empty->max_rid, 0);

  StoredResource o1 = MustPut("Observation", "o1", R"("subject":{"reference":"Patient/p1"})");
  StoredResource o2 = MustPut("Observation", "o2", R"("status":"final")");
  StoredResource o3 = MustPut("Observation", "o3", R"("performer":[{"reference":"Patient/p2"}])");
  MustPut("Patient", "p1");
  auto all = store_->RangeOf("Observation", ScanScope::kAll, "");
  ASSERT_OK(all);
  EXPECT_EQ(all->rows, 3);
  EXPECT_EQ(all->min_rid, o1.rid);
  EXPECT_EQ(all->max_rid, o3.rid);
  auto comp = store_->RangeOf("Observation", ScanScope::kAnyCompartment, "");
  ASSERT_OK(comp);
  EXPECT_EQ(comp->rows, 2);
  EXPECT_EQ(comp->min_rid, o1.rid);
  EXPECT_EQ(comp->max_rid, o3.rid);
  auto noncomp = store_->RangeOf("Practitioner", ScanScope::kAnyCompartment, "");
  ASSERT_OK(noncomp);
  EXPECT_EQ(noncomp->rows, 0);
  (void)o2;
}

TEST_F(SqliteStoreTest, ScanAnyCompartment) {
  MustPut("Patient", "p1");
  MustPut("Observation", "in", R"("subject":{"reference":"Patient/p1"})");
  MustPut("Observation", "out", R"("status":"final")");
  MustPut("Observation", "focus-only", R"("focus":[{"reference":"Patient/p1"}])");
  MustPut("Observation", "performer", R"("performer":[{"reference":"Patient/p9"}])");
  MustPut("Practitioner", "d1");
  Snapshot snap = MustSnapshot();
  EXPECT_THAT(ScanRefs(Request("Observation", snap, ScanScope::kAnyCompartment)),
              ElementsAre("Observation/in@1", "Observation/performer@1"));
  EXPECT_THAT(ScanRefs(Request("Patient", snap, ScanScope::kAnyCompartment)), ElementsAre("Patient/p1@1"));
  EXPECT_THAT(ScanRefs(Request("Practitioner", snap, ScanScope::kAnyCompartment)), IsEmpty());
  EXPECT_THAT(
      ScanRefs(Request("Observation", snap, ScanScope::kAll)),
      ElementsAre("Observation/in@1", "Observation/out@1", "Observation/focus-only@1", "Observation/performer@1"));
}

TEST_F(SqliteStoreTest, ScanAnyCompartmentKeepsResourcesDeletedAfterTheSnapshot) {
  MustPut("Observation", "o1", R"("subject":{"reference":"Patient/p1"})");
  Snapshot snap = MustSnapshot();
  ASSERT_OK(Delete("Observation", "o1"));
  EXPECT_THAT(ScanRefs(Request("Observation", snap, ScanScope::kAnyCompartment)), ElementsAre("Observation/o1@1"));
}

// A resource that was in a compartment at the snapshot and is updated afterwards out of it is part of a
// patient-level export as of the snapshot (its snapshot version is in the compartment), just like one deleted
// after the snapshot (ScanAnyCompartmentKeepsResourcesDeletedAfterTheSnapshot).
TEST_F(SqliteStoreTest, ScanAnyCompartmentUsesCompartmentMembershipAsOfTheSnapshot) {
  MustPut("Observation", "moved-out", R"("subject":{"reference":"Patient/p1"})");
  MustPut("Observation", "moved-in", R"("status":"final")");
  Snapshot snap = MustSnapshot();
  MustPut("Observation", "moved-out", R"("status":"final")");
  MustPut("Observation", "moved-in", R"("subject":{"reference":"Patient/p1"})");
  EXPECT_THAT(ScanRefs(Request("Observation", snap, ScanScope::kAnyCompartment)),
              ElementsAre("Observation/moved-out@1"));
}

// organizeOutputBy: one Patient's compartment as of the snapshot, without other Patients and Groups, with the
// type list, the _typeFilter matches of filtered types, and since/until applied; paged by rid.
TEST_F(SqliteStoreTest, ScanCompartmentReadsOnePatientsCompartmentAsOfTheSnapshot) {
  MustPut("Patient", "p1");
  MustPut("Patient", "p2", R"("link":[{"other":{"reference":"Patient/p1"},"type":"seealso"}])");
  MustPut("Group", "g", R"("type":"person","actual":true,"member":[{"entity":{"reference":"Patient/p1"}}])");
  MustPut("Observation", "stays", R"("subject":{"reference":"Patient/p1"})");
  MustPut("Observation", "leaves", R"("subject":{"reference":"Patient/p1"})");
  MustPut("Observation", "deleted-later", R"("subject":{"reference":"Patient/p1"})");
  MustPut("Condition", "c1", R"("subject":{"reference":"Patient/p1"})");
  MustPut("Observation", "other", R"("subject":{"reference":"Patient/p2"})");
  Snapshot snap = MustSnapshot();
  MustPut("Observation", "leaves", R"("subject":{"reference":"Patient/p2"})");
  ASSERT_OK(Delete("Observation", "deleted-later"));
  MustPut("Observation", "joins-later", R"("subject":{"reference":"Patient/p1"})");

  auto scan = [&](CompartmentScanRequest req) {
    std::vector<std::string> out;
    req.patient_id = "p1";
    req.snapshot = snap;
    req.max_rows = 1;
    for (int calls = 0; calls < 100; ++calls) {
      auto page = store_->ScanCompartment(req, [&](const ScanRow& row) {
        Row r = RowFromJson(row.rid, row.json);
        EXPECT_EQ(std::string(row.type), r.type);
        out.push_back(Ref(r));
        return Status::Ok();
      });
      EXPECT_TRUE(page.ok()) << page.status().ToString();
      if (!page.ok() || page->exhausted) break;
      req.after_rid = page->last_rid;
    }
    return out;
  };
  EXPECT_THAT(scan({}), ElementsAre("Observation/stays@1", "Observation/leaves@1", "Observation/deleted-later@1",
                                    "Condition/c1@1"));
  CompartmentScanRequest only;
  only.types = {"Condition"};
  EXPECT_THAT(scan(only), ElementsAre("Condition/c1@1"));
  // A filtered type keeps only its rows listed under the filter key.
  auto stays = store_->Read("Observation", "stays");
  ASSERT_OK(stays);
  ASSERT_OK(store_->AddToScope("job.filter", "Observation", {stays->rid}));
  CompartmentScanRequest filtered;
  filtered.filtered_types = {"Observation"};
  filtered.filter_key = "job.filter";
  EXPECT_THAT(scan(filtered), ElementsAre("Observation/stays@1", "Condition/c1@1"));
  CompartmentScanRequest later;
  later.since = snap.time + 1;
  EXPECT_THAT(scan(later), ElementsAre());
}

// includeAssociatedData: the Provenance of exported targets; with latest_only the most recent per target, the later
// row on a tie.
TEST_F(SqliteStoreTest, SelectAssociatedPicksTheProvenanceOfExportedTargets) {
  const int64_t p1 = MustPut("Patient", "p1").rid;
  MustPut("Patient", "p2");
  const int64_t a = MustPut("Provenance", "a").rid, b = MustPut("Provenance", "b").rid;
  const int64_t c = MustPut("Provenance", "c").rid, d = MustPut("Provenance", "d").rid;
  ASSERT_OK(store_->AddToScope(ExportedScopeKey("job"), "Patient", {p1}));
  ASSERT_OK(store_->AddAssociations("job", {{"Patient", "p1", a, 100},
                                            {"Patient", "p1", b, 300},
                                            {"Patient", "p1", c, 300},
                                            {"Patient", "p2", d, 900},
                                            {"Patient", "unknown", d, 900}}));
  // Recorded twice (a re-run after a crash): the same rows.
  ASSERT_OK(store_->AddAssociations("job", {{"Patient", "p1", a, 100}}));
  auto chosen = [&] {
    std::vector<int64_t> out;
    auto range = store_->RangeOf("Provenance", ScanScope::kJobScope, AssociatedScopeKey("job"));
    EXPECT_TRUE(range.ok());
    ScanRequest req = Request("Provenance", MustSnapshot(), ScanScope::kJobScope);
    req.job_id = AssociatedScopeKey("job");
    for (const auto& r : ScanAll(req)) out.push_back(r.rid);
    EXPECT_EQ(range.ok() ? range->rows : -1, static_cast<int64_t>(out.size()));
    return out;
  };
  ASSERT_OK(store_->SelectAssociated("job", /*latest_only=*/true));
  EXPECT_THAT(chosen(), ElementsAre(std::max(b, c)));
  ASSERT_OK(store_->SelectAssociated("job", /*latest_only=*/false));
  EXPECT_THAT(chosen(), ElementsAre(a, b, c));
  // Scratch: dropped with the job's other rows.
  ASSERT_OK(store_->jobs().DropJobScratch("job"));
  EXPECT_THAT(chosen(), ElementsAre());
}

// --- group scope ---

// Materialisation runs in bounded write transactions; with chunks of one row every chunk boundary is exercised.
class GroupScopeTest : public SqliteStoreTest {
 protected:
  void SetUp() override {
    scope_chunk_rows_ = 1;
    SqliteStoreTest::SetUp();
    MustPut("Patient", "p1", R"("managingOrganization":{"reference":"Organization/org1"})");
    MustPut("Patient", "p2");
    MustPut("Patient", "p3");  // not a member
    MustPut("Group", "g1",
            R"("type":"person","actual":true,"member":[{"entity":{"reference":"Patient/p1"}},)"
            R"({"entity":{"reference":"Patient/p2"}}],"managingEntity":{"reference":"Organization/org2"})");
    MustPut("Group", "g2", R"("type":"person","actual":true,"member":[{"entity":{"reference":"Patient/p1"}}])");
    MustPut("Observation", "o1",
            R"("subject":{"reference":"Patient/p1"},"performer":[{"reference":"Practitioner/d1"}],)"
            R"("encounter":{"reference":"Encounter/e9"})");
    MustPut("Observation", "o2", R"("subject":{"reference":"Patient/p2"},"hasMember":[{"reference":"Patient/p3"}])");
    MustPut("Observation", "o3",
            R"("subject":{"reference":"Patient/p3"},"performer":[{"reference":"Practitioner/d2"}])");
    MustPut("Encounter", "e1", R"("subject":{"reference":"Patient/p1"})");
    MustPut("Encounter", "e9", R"("subject":{"reference":"Patient/p3"})");
    MustPut("Practitioner", "d1",
            R"("qualification":[{"code":{"text":"MD"},"issuer":{"reference":"Organization/org3"}}])");
    MustPut("Practitioner", "d2");
    MustPut("Organization", "org1");
    MustPut("Organization", "org2");
    MustPut("Organization", "org3");
  }

  std::map<std::string, std::vector<std::string>> ScopeContents(const std::string& job_id, const Snapshot& snap) {
    std::map<std::string, std::vector<std::string>> out;
    auto types = store_->TypesInJobScope(job_id);
    EXPECT_TRUE(types.ok()) << types.status().ToString();
    if (!types.ok()) return out;
    for (const auto& type : *types) {
      ScanRequest req = Request(type, snap, ScanScope::kJobScope);
      req.job_id = job_id;
      req.max_rows = 2;
      for (const auto& r : ScanAll(req)) out[type].push_back(r.id);
    }
    return out;
  }
};

TEST_F(GroupScopeTest, MembersTheirCompartmentsAndReferencedResourcesOneHop) {
  ASSERT_OK(
      store_->MaterializeGroupScope("job1", "g1", {"p1", "p2"}, /*include_referenced=*/true, NowSnapshot(store_)));
  auto types = store_->TypesInJobScope("job1");
  ASSERT_OK(types);
  EXPECT_THAT(*types, ElementsAre("Encounter", "Group", "Observation", "Organization", "Patient", "Practitioner"));
  Snapshot snap = MustSnapshot();
  auto scope = ScopeContents("job1", snap);
  EXPECT_THAT(scope["Group"], ElementsAre("g1"));                   // not g2, though p1 is in it
  EXPECT_THAT(scope["Patient"], ElementsAre("p1", "p2"));           // not p3, though o2 points at it
  EXPECT_THAT(scope["Observation"], ElementsAre("o1", "o2"));       // not o3
  EXPECT_THAT(scope["Encounter"], ElementsAre("e1"));               // not e9 (p3's, referenced by o1)
  EXPECT_THAT(scope["Practitioner"], ElementsAre("d1"));            // referenced by o1; not d2
  EXPECT_THAT(scope["Organization"], ElementsAre("org1", "org2"));  // not org3 (two hops away)

  auto range = store_->RangeOf("Observation", ScanScope::kJobScope, "job1");
  ASSERT_OK(range);
  EXPECT_EQ(range->rows, 2);
  auto other_job = store_->RangeOf("Observation", ScanScope::kJobScope, "job2");
  ASSERT_OK(other_job);
  EXPECT_EQ(other_job->rows, 0);
}

TEST_F(GroupScopeTest, WithoutReferencedResources) {
  ASSERT_OK(
      store_->MaterializeGroupScope("job1", "g1", {"p1", "p2"}, /*include_referenced=*/false, NowSnapshot(store_)));
  auto types = store_->TypesInJobScope("job1");
  ASSERT_OK(types);
  EXPECT_THAT(*types, ElementsAre("Encounter", "Group", "Observation", "Patient"));
}

TEST_F(GroupScopeTest, IsIdempotentAndPerJob) {
  ASSERT_OK(store_->MaterializeGroupScope("job1", "g1", {"p1", "p2"}, true, NowSnapshot(store_)));
  ASSERT_OK(store_->MaterializeGroupScope("job1", "g1", {"p1", "p2"}, true, NowSnapshot(store_)));
  ASSERT_OK(store_->MaterializeGroupScope("job2", "g2", {"p1"}, false, NowSnapshot(store_)));
  Snapshot snap = MustSnapshot();
  auto job1 = ScopeContents("job1", snap);
  EXPECT_THAT(job1["Patient"], ElementsAre("p1", "p2"));
  EXPECT_THAT(job1["Observation"], ElementsAre("o1", "o2"));
  auto job2 = ScopeContents("job2", snap);
  EXPECT_THAT(job2["Group"], ElementsAre("g2"));
  EXPECT_THAT(job2["Patient"], ElementsAre("p1"));
  EXPECT_THAT(job2["Observation"], ElementsAre("o1"));
  EXPECT_EQ(job2.count("Practitioner"), 0u);

  // Re-materialising with fewer members replaces the scope.
  ASSERT_OK(store_->MaterializeGroupScope("job1", "g1", {"p2"}, false, NowSnapshot(store_)));
  job1 = ScopeContents("job1", snap);
  EXPECT_THAT(job1["Patient"], ElementsAre("p2"));
  EXPECT_THAT(job1["Observation"], ElementsAre("o2"));

  ASSERT_OK(store_->jobs().DropJobScratch("job1"));
  auto types = store_->TypesInJobScope("job1");
  ASSERT_OK(types);
  EXPECT_THAT(*types, IsEmpty());
  types = store_->TypesInJobScope("job2");
  ASSERT_OK(types);
  EXPECT_THAT(*types, ::testing::Not(IsEmpty()));
}

TEST_F(GroupScopeTest, MemberWithoutAPatientResource) {
  ASSERT_OK(store_->MaterializeGroupScope("job1", "g1", {"p1", "ghost"}, false, NowSnapshot(store_)));
  Snapshot snap = MustSnapshot();
  auto scope = ScopeContents("job1", snap);
  EXPECT_THAT(scope["Patient"], ElementsAre("p1"));
}

TEST_F(GroupScopeTest, ReferencedScopeForPatientLevelExports) {
  ASSERT_OK(store_->MaterializeReferencedScope("job3", NowSnapshot(store_)));
  auto types = store_->TypesInJobScope("job3");
  ASSERT_OK(types);
  // Non-compartment resources referenced from resources in any compartment (Patient p1 and Group g1 included),
  // one hop: org3 is only referenced by Practitioner d1, which is in no compartment.
  EXPECT_THAT(*types, ElementsAre("Organization", "Practitioner"));
  Snapshot snap = MustSnapshot();
  auto scope = ScopeContents("job3", snap);
  EXPECT_THAT(scope["Practitioner"], ElementsAre("d1", "d2"));
  EXPECT_THAT(scope["Organization"], ElementsAre("org1", "org2"));
}

// --- export jobs ---

ExportJobRecord SampleJob(const std::string& id) {
  ExportJobRecord j;
  j.job_id = id;
  j.job_name = "name of " + id;
  j.status = "SUBMITTED";
  j.view = "healthlake";
  j.level = "group";
  j.group_id = "g1";
  j.types = {"Patient", "Observation"};
  j.since = 1682099882123;
  j.output_format = "application/fhir+ndjson";
  j.s3_uri = "s3://bucket/prefix";
  j.kms_key_id = "alias/export";
  j.data_access_role_arn = "arn:aws:iam::123456789012:role/Export";
  j.request_url = "http://localhost:8080/datastore/x/r4/Group/g1/$export";
  j.submit_time = 1700000000000;
  j.message = "";
  j.include_referenced = false;
  return j;
}

void ExpectJobEq(const ExportJobRecord& got, const ExportJobRecord& want) {
  EXPECT_EQ(got.job_id, want.job_id);
  EXPECT_EQ(got.job_name, want.job_name);
  EXPECT_EQ(got.status, want.status);
  EXPECT_EQ(got.view, want.view);
  EXPECT_EQ(got.level, want.level);
  EXPECT_EQ(got.group_id, want.group_id);
  EXPECT_EQ(got.types, want.types);
  EXPECT_EQ(got.since, want.since);
  EXPECT_EQ(got.output_format, want.output_format);
  EXPECT_EQ(got.s3_uri, want.s3_uri);
  EXPECT_EQ(got.kms_key_id, want.kms_key_id);
  EXPECT_EQ(got.data_access_role_arn, want.data_access_role_arn);
  EXPECT_EQ(got.request_url, want.request_url);
  EXPECT_EQ(got.submit_time, want.submit_time);
  EXPECT_EQ(got.start_time, want.start_time);
  EXPECT_EQ(got.end_time, want.end_time);
  ASSERT_EQ(got.snapshot.has_value(), want.snapshot.has_value());
  if (got.snapshot) {
    EXPECT_EQ(got.snapshot->seq, want.snapshot->seq);
    EXPECT_EQ(got.snapshot->time, want.snapshot->time);
  }
  EXPECT_EQ(got.message, want.message);
  EXPECT_EQ(got.include_referenced, want.include_referenced);
  EXPECT_EQ(got.queue_order, want.queue_order);
  EXPECT_EQ(got.owner, want.owner);
  EXPECT_EQ(got.partial_manifests, want.partial_manifests);
  EXPECT_EQ(got.organize_by, want.organize_by);
  EXPECT_EQ(got.associated, want.associated);
}

TEST_F(SqliteStoreTest, InsertJobAssignsIncreasingQueueOrder) {
  ExportJobRecord a = SampleJob("a"), b = SampleJob("b"), c = SampleJob("c");
  ASSERT_OK(store_->jobs().InsertJob(&a));
  ASSERT_OK(store_->jobs().InsertJob(&b));
  ASSERT_OK(store_->jobs().InsertJob(&c));
  EXPECT_GT(a.queue_order, 0);
  EXPECT_GT(b.queue_order, a.queue_order);
  EXPECT_GT(c.queue_order, b.queue_order);
  ExportJobRecord dup = SampleJob("a");
  EXPECT_FALSE(store_->jobs().InsertJob(&dup).ok());
}

TEST_F(SqliteStoreTest, JobRoundTripsEveryField) {
  ExportJobRecord job = SampleJob("0123456789abcdef0123456789abcdef");
  job.owner = "AKIAEXAMPLE";
  ASSERT_OK(store_->jobs().InsertJob(&job));
  auto got = store_->jobs().GetJob(job.job_id);
  ASSERT_OK(got);
  ExpectJobEq(*got, job);
  EXPECT_EQ(got->owner, "AKIAEXAMPLE");

  ExportJobRecord full = SampleJob("1123456789abcdef0123456789abcdef");
  full.status = "IN_PROGRESS";
  full.start_time = 1700000001000;
  full.end_time = 1700000002000;
  full.snapshot = Snapshot{42, 1700000000500};
  full.types.clear();  // all types
  full.since.reset();
  full.message = "Export completed with 2 errors: \"quoted\"\nline";
  full.include_referenced = true;
  full.level = "system";
  full.group_id = "";
  full.partial_manifests = true;
  full.organize_by = "Patient";
  full.associated = "LatestProvenanceResources";
  ASSERT_OK(store_->jobs().InsertJob(&full));
  got = store_->jobs().GetJob(full.job_id);
  ASSERT_OK(got);
  ExpectJobEq(*got, full);
  EXPECT_TRUE(got->types.empty());
}

// A transition writes the status and the given fields, and keeps every other field.
TEST_F(SqliteStoreTest, TransitionWritesStatusAndGivenFieldsOnly) {
  ExportJobRecord job = SampleJob("t1");
  ASSERT_OK(store_->jobs().InsertJob(&job));
  JobUpdate start;
  start.start_time = 1700000001000;
  start.snapshot = Snapshot{42, 1700000000500};
  auto running = store_->jobs().TransitionJob("t1", {"SUBMITTED", "QUEUED"}, "IN_PROGRESS", start);
  ASSERT_OK(running);
  ExportJobRecord want = job;
  want.status = "IN_PROGRESS";
  want.start_time = start.start_time;
  want.snapshot = start.snapshot;
  ExpectJobEq(*running, want);
  auto stored = store_->jobs().GetJob("t1");
  ASSERT_OK(stored);
  ExpectJobEq(*stored, want);

  JobUpdate end;
  end.end_time = 1700000009000;
  end.message = "The export failed: disk full";
  auto failed = store_->jobs().TransitionJob("t1", {"IN_PROGRESS"}, "FAILED", end);
  ASSERT_OK(failed);
  want.status = "FAILED";
  want.end_time = end.end_time;
  want.message = *end.message;
  ExpectJobEq(*failed, want);
}

// Regression (hardening issue): a job cancelled while the scheduler held an old copy could be written back
// (CANCEL_COMPLETED -> CANCEL_IN_PROGRESS -> CANCEL_COMPLETED, its end time overwritten). Transitions are
// compare-and-set: from a state the job is not in, nothing is written.
TEST_F(SqliteStoreTest, TransitionIsCompareAndSet) {
  ExportJobRecord job = SampleJob("cas");
  ASSERT_OK(store_->jobs().InsertJob(&job));
  JobUpdate ended;
  ended.end_time = 1700000005000;
  ASSERT_OK(store_->jobs().TransitionJob("cas", {"SUBMITTED"}, "CANCEL_SUBMITTED", {}));
  ASSERT_OK(store_->jobs().TransitionJob("cas", {"CANCEL_SUBMITTED"}, "CANCEL_IN_PROGRESS", {}));
  ASSERT_OK(store_->jobs().TransitionJob("cas", {"CANCEL_IN_PROGRESS"}, "CANCEL_COMPLETED", ended));
  // The stale writer still believes the job is CANCEL_SUBMITTED or IN_PROGRESS.
  JobUpdate stale;
  stale.end_time = 1800000000000;
  EXPECT_STATUS(store_->jobs().TransitionJob("cas", {"CANCEL_SUBMITTED"}, "CANCEL_IN_PROGRESS", stale), kConflict,
                "CANCEL_COMPLETED");
  EXPECT_STATUS(store_->jobs().TransitionJob("cas", {"IN_PROGRESS", "CANCEL_SUBMITTED"}, "COMPLETED", stale), kConflict,
                "is CANCEL_COMPLETED, not IN_PROGRESS or CANCEL_SUBMITTED");
  auto got = store_->jobs().GetJob("cas");
  ASSERT_OK(got);
  EXPECT_EQ(got->status, "CANCEL_COMPLETED");
  EXPECT_EQ(got->end_time, ended.end_time);
}

TEST_F(SqliteStoreTest, UnknownJobs) {
  EXPECT_STATUS(store_->jobs().GetJob("nope"), kNotFound, "nope");
  EXPECT_STATUS(store_->jobs().TransitionJob("nope", {"SUBMITTED"}, "QUEUED", {}), kNotFound, "nope");
}

// The queue quota is decided in the same transaction as the insert: concurrent kick-offs cannot overshoot it.
TEST_F(SqliteStoreTest, InsertJobRefusesBeyondTheQueueLimit) {
  std::vector<std::thread> threads;
  std::atomic<int> accepted{0}, refused{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5; ++i) {
        ExportJobRecord j = SampleJob("q" + std::to_string(t) + "-" + std::to_string(i));
        Status st = store_->jobs().InsertJob(&j, /*queue_limit=*/25);
        if (st.ok()) {
          ++accepted;
        } else {
          EXPECT_EQ(st.code(), StatusCode::kTooManyRequests) << st.ToString();
          EXPECT_NE(st.message().find("limit is 25"), std::string::npos) << st.message();
          ++refused;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(accepted.load(), 25);
  EXPECT_EQ(refused.load(), 15);
  auto waiting = store_->jobs().CountWaitingJobs();
  ASSERT_OK(waiting);
  EXPECT_EQ(*waiting, 25);
  // Running jobs do not count: one starts, one more may wait.
  auto queued = store_->jobs().JobsWithStatus({"SUBMITTED"});
  ASSERT_OK(queued);
  ASSERT_OK(store_->jobs().TransitionJob((*queued)[0].job_id, {"SUBMITTED"}, "IN_PROGRESS", {}));
  ExportJobRecord one_more = SampleJob("one-more");
  EXPECT_OK(store_->jobs().InsertJob(&one_more, 25));
  ExportJobRecord too_many = SampleJob("too-many");
  EXPECT_STATUS(store_->jobs().InsertJob(&too_many, 25), kTooManyRequests, "25");
  EXPECT_STATUS(store_->jobs().GetJob("too-many"), kNotFound, "too-many");
}

TEST_F(SqliteStoreTest, JobsWithStatusInQueueOrder) {
  std::vector<std::pair<std::string, std::string>> jobs = {
      {"j1", "COMPLETED"}, {"j2", "SUBMITTED"}, {"j3", "IN_PROGRESS"}, {"j4", "SUBMITTED"}, {"j5", "FAILED"}};
  for (const auto& [id, status] : jobs) {
    ExportJobRecord j = SampleJob(id);
    j.status = status;
    ASSERT_OK(store_->jobs().InsertJob(&j));
  }
  auto active = store_->jobs().JobsWithStatus({"SUBMITTED", "IN_PROGRESS"});
  ASSERT_OK(active);
  std::vector<std::string> ids;
  for (const auto& j : *active) ids.push_back(j.job_id);
  EXPECT_THAT(ids, ElementsAre("j2", "j3", "j4"));
  auto none = store_->jobs().JobsWithStatus({"CANCEL_SUBMITTED"});
  ASSERT_OK(none);
  EXPECT_THAT(*none, IsEmpty());
  auto nothing = store_->jobs().JobsWithStatus({});
  ASSERT_OK(nothing);
  EXPECT_THAT(*nothing, IsEmpty());

  // A status change moves a job between lists without changing its place in the queue.
  ASSERT_OK(store_->jobs().TransitionJob("j1", {"COMPLETED"}, "SUBMITTED", {}));
  active = store_->jobs().JobsWithStatus({"SUBMITTED", "IN_PROGRESS"});
  ASSERT_OK(active);
  ids.clear();
  for (const auto& j : *active) ids.push_back(j.job_id);
  EXPECT_THAT(ids, ElementsAre("j1", "j2", "j3", "j4"));
}

ExportTaskRecord Task(const std::string& job, int no, const std::string& type, ScanScope scope, int64_t min,
                      int64_t max) {
  ExportTaskRecord t;
  t.job_id = job;
  t.task_no = no;
  t.type = type;
  t.scope = scope;
  t.min_rid = min;
  t.max_rid = max;
  t.after_rid = min;
  t.planned_rows = max - min;
  return t;
}

void ExpectTaskEq(const ExportTaskRecord& got, const ExportTaskRecord& want) {
  EXPECT_EQ(got.job_id, want.job_id);
  EXPECT_EQ(got.task_no, want.task_no);
  EXPECT_EQ(got.type, want.type);
  EXPECT_EQ(got.scope, want.scope);
  EXPECT_EQ(got.min_rid, want.min_rid);
  EXPECT_EQ(got.max_rid, want.max_rid);
  EXPECT_EQ(got.after_rid, want.after_rid);
  EXPECT_EQ(got.planned_rows, want.planned_rows);
  EXPECT_EQ(got.done, want.done);
}

TEST_F(SqliteStoreTest, ReplaceTasksAndTasks) {
  std::vector<ExportTaskRecord> tasks = {Task("j", 2, "Observation", ScanScope::kAnyCompartment, 100, 200),
                                         Task("j", 0, "Patient", ScanScope::kAll, 0, 50),
                                         Task("j", 1, "Group", ScanScope::kJobScope, 10, 20)};
  tasks[1].done = true;
  ASSERT_OK(store_->jobs().ReplaceTasks("j", tasks));
  ASSERT_OK(store_->jobs().ReplaceTasks("other", {Task("other", 0, "Patient", ScanScope::kAll, 0, 1)}));
  auto got = store_->jobs().Tasks("j");
  ASSERT_OK(got);
  ASSERT_EQ(got->size(), 3u);
  ExpectTaskEq((*got)[0], tasks[1]);  // ordered by task_no
  ExpectTaskEq((*got)[1], tasks[2]);
  ExpectTaskEq((*got)[2], tasks[0]);

  ASSERT_OK(store_->jobs().ReplaceTasks("j", {Task("j", 0, "Encounter", ScanScope::kAll, 5, 6)}));
  got = store_->jobs().Tasks("j");
  ASSERT_OK(got);
  ASSERT_EQ(got->size(), 1u);
  EXPECT_EQ((*got)[0].type, "Encounter");
  auto other = store_->jobs().Tasks("other");
  ASSERT_OK(other);
  EXPECT_EQ(other->size(), 1u);
  auto none = store_->jobs().Tasks("none");
  ASSERT_OK(none);
  EXPECT_THAT(*none, IsEmpty());
}

ExportFileRecord File(const std::string& job, const std::string& kind, const std::string& type, int no, int task) {
  ExportFileRecord f;
  f.job_id = job;
  f.kind = kind;
  f.type = type;
  f.file_no = no;
  f.key = "prefix/" + job + "/" + type + "-" + std::to_string(no) + ".ndjson";
  f.count = 10 + no;
  f.bytes = 1000 + no;
  f.task_no = task;
  return f;
}

TEST_F(SqliteStoreTest, CommitFileAdvancesTheTaskCheckpoint) {
  ASSERT_OK(store_->jobs().ReplaceTasks(
      "j", {Task("j", 0, "Patient", ScanScope::kAll, 0, 100), Task("j", 1, "Observation", ScanScope::kAll, 0, 100)}));
  ASSERT_OK(store_->jobs().CommitFile(File("j", "output", "Patient", 1, 0), 40, false));
  auto tasks = store_->jobs().Tasks("j");
  ASSERT_OK(tasks);
  EXPECT_EQ((*tasks)[0].after_rid, 40);
  EXPECT_FALSE((*tasks)[0].done);
  EXPECT_EQ((*tasks)[1].after_rid, 0);

  ASSERT_OK(store_->jobs().CommitFile(File("j", "output", "Patient", 2, 0), 100, true));
  ASSERT_OK(store_->jobs().CommitFile(File("j", "error", "OperationOutcome", 1, 1), 7, false));
  ASSERT_OK(store_->jobs().CommitFile(File("j", "output", "Observation", 1, 1), 8, false));
  tasks = store_->jobs().Tasks("j");
  ASSERT_OK(tasks);
  EXPECT_EQ((*tasks)[0].after_rid, 100);
  EXPECT_TRUE((*tasks)[0].done);
  EXPECT_EQ((*tasks)[1].after_rid, 8);

  ASSERT_OK(store_->jobs().CommitFiles({}, "j", 1, 100, /*task_done=*/true));
  tasks = store_->jobs().Tasks("j");
  ASSERT_OK(tasks);
  EXPECT_EQ((*tasks)[1].after_rid, 100);
  EXPECT_TRUE((*tasks)[1].done);

  auto files = store_->jobs().Files("j");
  ASSERT_OK(files);
  ASSERT_EQ(files->size(), 4u);
  // Output files first (by type, then number), then error files.
  std::vector<std::string> keys;
  for (const auto& f : *files) keys.push_back(f.kind + ":" + f.type + ":" + std::to_string(f.file_no));
  EXPECT_THAT(keys,
              ElementsAre("output:Observation:1", "output:Patient:1", "output:Patient:2", "error:OperationOutcome:1"));
  ExportFileRecord want = File("j", "output", "Patient", 2, 0);
  const ExportFileRecord& got = (*files)[2];
  EXPECT_EQ(got.job_id, want.job_id);
  EXPECT_EQ(got.key, want.key);
  EXPECT_EQ(got.count, want.count);
  EXPECT_EQ(got.bytes, want.bytes);
  EXPECT_EQ(got.task_no, want.task_no);
  auto none = store_->jobs().Files("other");
  ASSERT_OK(none);
  EXPECT_THAT(*none, IsEmpty());
}

TEST_F(SqliteStoreTest, CommitFileIsAtomic) {
  ASSERT_OK(store_->jobs().ReplaceTasks("j", {Task("j", 0, "Patient", ScanScope::kAll, 0, 100)}));
  ASSERT_OK(store_->jobs().CommitFile(File("j", "output", "Patient", 1, 0), 40, false));
  // The same file twice is refused, and the checkpoint does not move.
  EXPECT_FALSE(store_->jobs().CommitFile(File("j", "output", "Patient", 1, 0), 90, true).ok());
  auto tasks = store_->jobs().Tasks("j");
  ASSERT_OK(tasks);
  EXPECT_EQ((*tasks)[0].after_rid, 40);
  EXPECT_FALSE((*tasks)[0].done);
  auto files = store_->jobs().Files("j");
  ASSERT_OK(files);
  EXPECT_EQ(files->size(), 1u);
}

// Regression (hardening issue): the scan's read transaction was open while rows went to the sink, so a slow
// S3 upload pinned the WAL. Rows are handed over only after the transaction has ended: a full checkpoint
// (TRUNCATE) succeeds from inside the callback.
TEST_F(SqliteStoreTest, ScanHandsRowsOverAfterItsReadTransactionEnded) {
  for (int i = 0; i < 3; ++i) MustPut("Patient", Id("p", i));
  Snapshot snap = MustSnapshot();
  auto raw = SqliteConnection::Open(store_->info().path, 5000);
  ASSERT_OK(raw);
  int rows = 0;
  auto progress = store_->Scan(Request("Patient", snap), [&](const ScanRow& row) -> Status {
    ++rows;
    MustPut("Observation", Id("o", rows), R"("status":"final")");  // a writer during the scan
    auto q = (*raw)->Prepare("PRAGMA wal_checkpoint(TRUNCATE)");
    if (!q.ok()) return q.status();
    auto step = (*q)->Step();
    if (!step.ok()) return step.status();
    EXPECT_TRUE(*step);
    EXPECT_EQ((*q)->Int(0), 0) << "checkpoint blocked by a reader while row " << row.id << " was delivered";
    return Status::Ok();
  });
  ASSERT_OK(progress);
  EXPECT_EQ(rows, 3);
}

TEST_F(SqliteStoreTest, ReadAsOfGivesTheVersionCurrentAtASequence) {
  StoredResource v1 = MustPut("Group", "g", R"("type":"person","actual":true)");
  Snapshot s1 = MustSnapshot();
  StoredResource v2 = MustPut("Group", "g", R"("type":"person","actual":false)");
  Snapshot s2 = MustSnapshot();
  ASSERT_OK(Delete("Group", "g"));
  Snapshot s3 = MustSnapshot();
  auto at1 = store_->ReadAsOf("Group", "g", s1.seq);
  ASSERT_OK(at1);
  EXPECT_EQ(at1->version, 1);
  EXPECT_EQ(at1->json, v1.json);
  auto at2 = store_->ReadAsOf("Group", "g", s2.seq);
  ASSERT_OK(at2);
  EXPECT_EQ(at2->version, 2);
  EXPECT_EQ(at2->json, v2.json);
  auto at3 = store_->ReadAsOf("Group", "g", s3.seq);
  ASSERT_OK(at3);
  EXPECT_TRUE(at3->deleted);
  EXPECT_STATUS(store_->ReadAsOf("Group", "g", v1.seq - 1), kNotFound, "did not exist");
  EXPECT_STATUS(store_->ReadAsOf("Group", "never", s3.seq), kNotFound, "Group/never");
}

TEST_F(SqliteStoreTest, JobsWithScratchListsFinishedJobsWhoseScopeIsLeft) {
  MustPut("Patient", "p1");
  Snapshot snap = MustSnapshot();
  for (const char* id : {"done", "running"}) {
    ExportJobRecord j = SampleJob(id);
    ASSERT_OK(store_->jobs().InsertJob(&j));
    ASSERT_OK(store_->MaterializeReferencedScope(id, snap));
    ASSERT_OK(store_->MaterializeGroupScope(id, "g1", {"p1"}, false, snap));
  }
  ASSERT_OK(store_->jobs().TransitionJob("done", {"SUBMITTED"}, "FAILED", {}));
  ASSERT_OK(store_->jobs().TransitionJob("running", {"SUBMITTED"}, "IN_PROGRESS", {}));
  auto left = store_->jobs().JobsWithScratch();
  ASSERT_OK(left);
  EXPECT_THAT(*left, ElementsAre("done"));  // a running job's scope is not scratch yet
  ASSERT_OK(store_->jobs().DropJobScratch("done"));
  left = store_->jobs().JobsWithScratch();
  ASSERT_OK(left);
  EXPECT_THAT(*left, IsEmpty());
  auto types = store_->TypesInJobScope("running");
  ASSERT_OK(types);
  EXPECT_THAT(*types, ElementsAre("Patient"));
}

// --- schema versions ---

struct RawDatastore {
  std::string id;
  fs::path path;
};

// Creates {data_dir}/datastores/{id}/fhir.db at schema `version` with the datastore meta rows.
RawDatastore CreateRawDatastore(const fs::path& data_dir, int version, int64_t created_at = 1600000000000) {
  RawDatastore ds;
  ds.id = NewHexId();
  fs::create_directories(data_dir / "datastores" / ds.id);
  ds.path = data_dir / "datastores" / ds.id / "fhir.db";
  auto conn = SqliteConnection::Open(ds.path.string(), 1000);
  EXPECT_TRUE(conn.ok()) << conn.status().ToString();
  if (!conn.ok()) return ds;
  EXPECT_OK(CreateSchema(**conn, version));
  EXPECT_OK((*conn)->Exec("INSERT INTO meta(key, value) VALUES ('datastore_id', '" + ds.id +
                          "'), ('datastore_name', 'old one'), ('created_at', '" + std::to_string(created_at) + "')"));
  return ds;
}

std::string SchemaVersionOf(const fs::path& db) {
  auto conn = SqliteConnection::Open(db.string(), 1000);
  EXPECT_TRUE(conn.ok());
  if (!conn.ok()) return "";
  auto q = (*conn)->Prepare("SELECT value FROM meta WHERE key='schema_version'");
  EXPECT_TRUE(q.ok());
  if (!q.ok()) return "";
  auto row = (*q)->Step();
  EXPECT_TRUE(row.ok() && *row);
  return row.ok() && *row ? (*q)->Str(0) : "";
}

TEST(SqliteSchemaTest, NewDatabaseIsAtTheCurrentVersion) {
  TempDir tmp;
  StoreOptions options;
  options.data_dir = tmp.str();
  auto catalog = OpenSqliteCatalog(options);
  ASSERT_OK(catalog);
  std::string path = (*catalog)->Default()->info().path;
  catalog->reset();
  EXPECT_EQ(SchemaVersionOf(path), std::to_string(kSchemaVersion));
}

TEST(SqliteSchemaTest, VersionOneDatabaseIsMigrated) {
  TempDir tmp;
  RawDatastore ds = CreateRawDatastore(tmp.path(), 1);
  {
    auto conn = SqliteConnection::Open(ds.path.string(), 1000);
    ASSERT_OK(conn);
    // A resource written by the old version.
    ASSERT_OK((*conn)->Exec(
        "INSERT INTO resources(type, id, version, seq, last_updated, deleted, json) VALUES ('Patient', 'old', 1, 1, "
        "1600000000000, 0, '{\"resourceType\":\"Patient\",\"id\":\"old\"}'); UPDATE counters SET value=1 WHERE "
        "name='seq'"));
  }
  EXPECT_EQ(SchemaVersionOf(ds.path), "1");

  StoreOptions options;
  options.data_dir = tmp.str();
  auto catalog = OpenSqliteCatalog(options);
  ASSERT_OK(catalog);
  ASSERT_EQ((*catalog)->All().size(), 1u);
  ResourceStore* store = (*catalog)->Default();
  EXPECT_EQ(store->info().id, ds.id);
  EXPECT_EQ(store->info().name, "old one");
  EXPECT_EQ(store->info().created_at, 1600000000000);
  EXPECT_EQ(SchemaVersionOf(ds.path), std::to_string(kSchemaVersion));

  auto old = store->Read("Patient", "old");
  ASSERT_OK(old);
  EXPECT_EQ(old->json, R"({"resourceType":"Patient","id":"old"})");
  // The export tables exist and work.
  ExportJobRecord job = SampleJob("j1");
  ASSERT_OK(store->jobs().InsertJob(&job));
  auto got = store->jobs().GetJob("j1");
  ASSERT_OK(got);
  ExpectJobEq(*got, job);
  ASSERT_OK(store->jobs().ReplaceTasks("j1", {Task("j1", 0, "Patient", ScanScope::kAll, 0, 10)}));
  ASSERT_OK(store->jobs().CommitFile(File("j1", "output", "Patient", 1, 0), 10, true));
  auto files = store->jobs().Files("j1");
  ASSERT_OK(files);
  EXPECT_EQ(files->size(), 1u);
  ASSERT_OK(store->MaterializeGroupScope("j1", "g", {"old"}, true, NowSnapshot(store)));
  auto types = store->TypesInJobScope("j1");
  ASSERT_OK(types);
  EXPECT_THAT(*types, ElementsAre("Patient"));

  // Opening again (already migrated) works too.
  catalog->reset();
  auto again = OpenSqliteCatalog(options);
  ASSERT_OK(again);
  EXPECT_EQ((*again)->Default()->info().id, ds.id);
}

TEST(SqliteSchemaTest, NewerSchemaIsRefused) {
  TempDir tmp;
  RawDatastore ds = CreateRawDatastore(tmp.path(), kSchemaVersion);
  {
    auto conn = SqliteConnection::Open(ds.path.string(), 1000);
    ASSERT_OK(conn);
    ASSERT_OK(
        (*conn)->Exec("UPDATE meta SET value='" + std::to_string(kSchemaVersion + 1) + "' WHERE key='schema_version'"));
  }
  StoreOptions options;
  options.data_dir = tmp.str();
  auto catalog = OpenSqliteCatalog(options);
  EXPECT_STATUS(catalog, kInvalid, "newer");
  EXPECT_STATUS(catalog, kInvalid, ds.path.string());
  EXPECT_STATUS(catalog, kInvalid, "schema version " + std::to_string(kSchemaVersion + 1));
  EXPECT_STATUS(catalog, kInvalid, "run a newer fhirlake");
  // Nothing was changed.
  EXPECT_EQ(SchemaVersionOf(ds.path), std::to_string(kSchemaVersion + 1));
}

TEST(SqliteSchemaTest, ForeignDatabaseIsRefused) {
  TempDir tmp;
  std::string id = NewHexId();
  fs::create_directories(tmp.path() / "datastores" / id);
  fs::path path = tmp.path() / "datastores" / id / "fhir.db";
  {
    auto conn = SqliteConnection::Open(path.string(), 1000);
    ASSERT_OK(conn);
    ASSERT_OK((*conn)->Exec("CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT)"));
  }
  StoreOptions options;
  options.data_dir = tmp.str();
  auto catalog = OpenSqliteCatalog(options);
  EXPECT_STATUS(catalog, kInvalid, "not a fhirlake datastore database");
  EXPECT_STATUS(catalog, kInvalid, path.string());
}

TEST(SqliteSchemaTest, MetaTableWithoutSchemaVersionIsRefused) {
  TempDir tmp;
  std::string id = NewHexId();
  fs::create_directories(tmp.path() / "datastores" / id);
  fs::path path = tmp.path() / "datastores" / id / "fhir.db";
  {
    auto conn = SqliteConnection::Open(path.string(), 1000);
    ASSERT_OK(conn);
    ASSERT_OK(
        (*conn)->Exec("CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
                      "INSERT INTO meta VALUES ('something', 'else')"));
  }
  StoreOptions options;
  options.data_dir = tmp.str();
  EXPECT_STATUS(OpenSqliteCatalog(options), kInvalid, "not a fhirlake datastore database");
}

TEST(SqliteSchemaTest, CreateSchemaBuildsExactlyTheRequestedVersion) {
  TempDir tmp;
  auto conn = SqliteConnection::Open((tmp.path() / "x.db").string(), 1000);
  ASSERT_OK(conn);
  ASSERT_OK(CreateSchema(**conn, 1));
  auto q = (*conn)->Prepare("SELECT count(*) FROM sqlite_master WHERE type='table' AND name='export_jobs'");
  ASSERT_OK(q);
  auto row = (*q)->Step();
  ASSERT_OK(row);
  ASSERT_TRUE(*row);
  EXPECT_EQ((*q)->Int(0), 0);
  q->reset();
  ASSERT_OK(EnsureSchema(**conn, "x.db"));
  auto q2 = (*conn)->Prepare("SELECT count(*) FROM sqlite_master WHERE type='table' AND name='export_jobs'");
  ASSERT_OK(q2);
  row = (*q2)->Step();
  ASSERT_OK(row);
  ASSERT_TRUE(*row);
  EXPECT_EQ((*q2)->Int(0), 1);
}

TEST(SqliteCatalogTest, SeveralDatastoresDefaultIsTheOldest) {
  TempDir tmp;
  RawDatastore newer = CreateRawDatastore(tmp.path(), kSchemaVersion, 1700000000000);
  RawDatastore older = CreateRawDatastore(tmp.path(), 1, 1500000000000);
  StoreOptions options;
  options.data_dir = tmp.str();
  auto catalog = OpenSqliteCatalog(options);
  ASSERT_OK(catalog);
  ASSERT_EQ((*catalog)->All().size(), 2u);
  EXPECT_EQ((*catalog)->Default()->info().id, older.id);
  ASSERT_NE((*catalog)->Find(newer.id), nullptr);
  EXPECT_EQ((*catalog)->Find(newer.id)->info().created_at, 1700000000000);
}

// The control plane's datastores: created with a status and a config that survive a reopen, dropped with a tombstone
// that stays (and no new default datastore in their place), pointers held across a drop still safe to call.
TEST(SqliteCatalogTest, CreateAndDropDatastores) {
  TempDir tmp;
  StoreOptions options;
  options.data_dir = tmp.str();
  std::string made_id;
  {
    auto catalog = OpenSqliteCatalog(options);
    ASSERT_OK(catalog);
    ASSERT_EQ((*catalog)->All().size(), 1u);  // the default
    auto made = (*catalog)->Create("second", R"({"DatastoreTypeVersion":"R4"})", datastore_status::kCreating);
    ASSERT_OK(made);
    made_id = (*made)->info().id;
    EXPECT_EQ((*made)->status(), datastore_status::kCreating);
    EXPECT_EQ((*catalog)->Find(made_id), *made);
    ASSERT_OK((*made)->SetStatus(datastore_status::kActive));
  }
  EXPECT_FALSE(std::filesystem::exists(tmp.path() / "datastores" / (".creating-" + made_id)));
  auto catalog = OpenSqliteCatalog(options);
  ASSERT_OK(catalog);
  ASSERT_EQ((*catalog)->All().size(), 2u);
  ResourceStore* second = (*catalog)->Find(made_id);
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(second->info().name, "second");
  EXPECT_EQ(second->info().config, R"({"DatastoreTypeVersion":"R4"})");
  EXPECT_EQ(second->status(), datastore_status::kActive);
  // Both dropped (the default too): gone from All/Find and from disk, their tombstones kept, oldest first.
  ResourceStore* first = (*catalog)->Default();
  const std::string first_id = first->info().id;
  ASSERT_OK(first->jobs().JobsWithStatus({"SUBMITTED"}));
  ASSERT_OK((*catalog)->Drop(first_id, R"({"DatastoreId":"a"})"));
  ASSERT_OK((*catalog)->Drop(made_id, R"({"DatastoreId":"b"})"));
  EXPECT_STATUS((*catalog)->Drop(made_id, "{}"), kNotFound, made_id);
  EXPECT_TRUE((*catalog)->All().empty());
  EXPECT_EQ((*catalog)->Find(made_id), nullptr);
  EXPECT_EQ((*catalog)->Default(), nullptr);
  EXPECT_FALSE(std::filesystem::exists(tmp.path() / "datastores" / made_id));
  // A pointer taken before the drop answers, with an error (its connections are closed).
  EXPECT_STATUS(first->Read("Patient", "x"), kNotFound, "deleted");
  auto deleted = (*catalog)->Deleted();
  ASSERT_OK(deleted);
  EXPECT_THAT(*deleted, ElementsAre(R"({"DatastoreId":"a"})", R"({"DatastoreId":"b"})"));
  // Reopened: still none, and no new default; what a crash leaves half-made or half-removed is cleared.
  std::filesystem::create_directories(tmp.path() / "datastores" / ".creating-0123");
  std::filesystem::create_directories(tmp.path() / "datastores" / ".removing-4567");
  catalog = OpenSqliteCatalog(options);
  ASSERT_OK(catalog);
  EXPECT_TRUE((*catalog)->All().empty());
  EXPECT_FALSE(std::filesystem::exists(tmp.path() / "datastores" / ".creating-0123"));
  EXPECT_FALSE(std::filesystem::exists(tmp.path() / "datastores" / ".removing-4567"));
  deleted = (*catalog)->Deleted();
  ASSERT_OK(deleted);
  EXPECT_EQ(deleted->size(), 2u);
}

// Runs `fn` in `n` forked processes released at the same moment; returns how many exited 0.
int RunInProcessesAtOnce(int n, const std::function<bool()>& fn) {
  int go[2];
  EXPECT_EQ(pipe(go), 0);
  std::vector<pid_t> pids;
  for (int i = 0; i < n; ++i) {
    pid_t pid = fork();
    if (pid == 0) {
      close(go[1]);
      char c;
      (void)!read(go[0], &c, 1);  // returns when the parent closes its end
      _exit(fn() ? 0 : 1);
    }
    pids.push_back(pid);
  }
  close(go[0]);
  close(go[1]);  // release them all
  int ok = 0;
  for (pid_t pid : pids) {
    int status = 0;
    waitpid(pid, &status, 0);
    ok += WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
  return ok;
}

// Regression (hardening issue): two processes on an empty data directory each created a default datastore.
TEST(SqliteCatalogTest, ProcessesOpeningAnEmptyDataDirAtOnceCreateOneDatastore) {
  for (int round = 0; round < 5; ++round) {
    TempDir tmp;
    int ok = RunInProcessesAtOnce(4, [&] {
      StoreOptions options;
      options.data_dir = tmp.str();
      options.busy_timeout_ms = 10000;
      return OpenSqliteCatalog(options).ok();
    });
    EXPECT_EQ(ok, 4);
    int datastores = 0;
    for (const auto& e : fs::directory_iterator(fs::path(tmp.str()) / "datastores")) datastores += e.is_directory();
    EXPECT_EQ(datastores, 1) << "round " << round;
  }
}

// Regression (hardening issue): the schema version was read outside the migration transaction, so `serve` and
// `load` opening an old store at once could both run a migration.
TEST(SqliteSchemaTest, ProcessesMigratingAtOnceMigrateOnce) {
  for (int round = 0; round < 5; ++round) {
    TempDir tmp;
    RawDatastore ds = CreateRawDatastore(tmp.str(), 2);
    int ok = RunInProcessesAtOnce(4, [&] {
      StoreOptions options;
      options.data_dir = tmp.str();
      options.busy_timeout_ms = 10000;
      auto catalog = OpenSqliteCatalog(options);
      if (!catalog.ok()) std::fprintf(stderr, "open failed: %s\n", catalog.status().ToString().c_str());
      return catalog.ok();
    });
    EXPECT_EQ(ok, 4) << "round " << round;
    EXPECT_EQ(SchemaVersionOf(ds.path), std::to_string(kSchemaVersion));
  }
}

}  // namespace
}  // namespace fhirlake::store
