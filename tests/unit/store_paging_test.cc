// Tests for keyset paging of ResourceStore::History and ResourceStore::ReadCompartment (src/store/resource_store.h,
// sqlite_store.cc) against a real SQLite datastore: pages hold at most limit + 1 rows, walking them visits every row
// once, the key continues where the previous page ended even when rows are written in between, and `total` counts
// the whole read.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "fhir/resource_parser.h"
#include "store/resource_store.h"
#include "test_util.h"

namespace fhirlake::store {
namespace {

using ::fhirlake::testutil::TempDir;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using PageRequest = ResourceStore::PageRequest;

class StorePagingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    StoreOptions options;
    options.data_dir = tmp_.str();
    auto catalog = OpenSqliteCatalog(options);
    ASSERT_OK(catalog);
    catalog_ = std::move(catalog).value();
    store_ = catalog_->Default();
    ASSERT_NE(store_, nullptr);
  }

  void MustPut(const std::string& type, const std::string& id, const std::string& members = "") {
    std::string json = R"({"resourceType":")" + type + R"(","id":")" + id + "\"";
    if (!members.empty()) json += "," + members;
    json += "}";
    auto parsed = parser_.Parse(json, nullptr);
    ASSERT_OK(parsed);
    auto txn = store_->BeginWrite();
    ASSERT_OK(txn);
    ASSERT_OK((*txn)->Put(*parsed, id, std::nullopt));
    ASSERT_OK((*txn)->Commit());
  }

  void MustDelete(const std::string& type, const std::string& id) {
    auto txn = store_->BeginWrite();
    ASSERT_OK(txn);
    ASSERT_OK((*txn)->Delete(type, id, std::nullopt));
    ASSERT_OK((*txn)->Commit());
  }

  void MustPutObservation(const std::string& id, const std::string& patient) {
    MustPut("Observation", id, R"("status":"final","subject":{"reference":"Patient/)" + patient + R"("})");
  }

  // Walks every page the way a handler does: a full page has limit + 1 rows, the last one dropped and the key of
  // the page's last row used as the next `after`. Returns the rows in order.
  template <typename Read, typename KeyOf>
  std::vector<StoredResource> WalkPages(size_t limit, Read read, KeyOf key_of, int64_t* total = nullptr) {
    std::vector<StoredResource> all;
    std::optional<int64_t> after;
    for (int pages = 0; pages < 10000; ++pages) {
      auto page = read(PageRequest{after, limit});
      EXPECT_TRUE(page.ok()) << page.status().ToString();
      if (!page.ok()) return all;
      EXPECT_LE(page->rows.size(), limit + 1);
      if (total != nullptr) *total = page->total;
      const bool more = page->rows.size() > limit;
      if (more) page->rows.resize(limit);
      for (auto& r : page->rows) all.push_back(std::move(r));
      if (!more) return all;
      after = key_of(all.back());
    }
    ADD_FAILURE() << "paging does not terminate";
    return all;
  }

  std::vector<int64_t> HistoryVersions(const std::string& type, const std::string& id, size_t limit,
                                       int64_t* total = nullptr) {
    std::vector<int64_t> versions;
    for (const auto& r : WalkPages(
             limit, [&](const PageRequest& p) { return store_->History(type, id, p); },
             [](const StoredResource& r) { return r.version; }, total)) {
      versions.push_back(r.version);
    }
    return versions;
  }

  std::vector<std::string> CompartmentIds(const std::string& patient, const std::string& type, size_t limit,
                                          int64_t* total = nullptr) {
    std::vector<std::string> ids;
    for (const auto& r : WalkPages(
             limit, [&](const PageRequest& p) { return store_->ReadCompartment(patient, type, p); },
             [](const StoredResource& r) { return r.rid; }, total)) {
      ids.push_back(r.type + "/" + r.id);
    }
    return ids;
  }

  TempDir tmp_;
  std::unique_ptr<DatastoreCatalog> catalog_;
  ResourceStore* store_ = nullptr;
  fhir::ResourceParser parser_;
};

// --- History ---

TEST_F(StorePagingTest, HistoryPagesNewestFirstWithOneExtraRow) {
  for (int i = 0; i < 7; ++i) ASSERT_NO_FATAL_FAILURE(MustPut("Patient", "p1"));
  ASSERT_NO_FATAL_FAILURE(MustDelete("Patient", "p1"));  // version 8, a tombstone

  auto first = store_->History("Patient", "p1", PageRequest{std::nullopt, 3});
  ASSERT_OK(first);
  EXPECT_EQ(first->total, 8);
  ASSERT_EQ(first->rows.size(), 4u);  // 3 asked for, plus one saying that there is more
  EXPECT_EQ(first->rows[0].version, 8);
  EXPECT_TRUE(first->rows[0].deleted);
  EXPECT_EQ(first->rows[3].version, 5);

  auto middle = store_->History("Patient", "p1", PageRequest{6, 3});  // after version 6: 5, 4, 3 (+ 2)
  ASSERT_OK(middle);
  ASSERT_EQ(middle->rows.size(), 4u);
  EXPECT_EQ(middle->rows[0].version, 5);
  EXPECT_EQ(middle->rows[3].version, 2);
  EXPECT_EQ(middle->total, 8);

  auto last = store_->History("Patient", "p1", PageRequest{3, 3});  // 2, 1: no extra row
  ASSERT_OK(last);
  ASSERT_EQ(last->rows.size(), 2u);
  EXPECT_EQ(last->rows[1].version, 1);
  EXPECT_EQ(last->rows[1].id, "p1");
  EXPECT_EQ(last->rows[1].type, "Patient");

  auto past = store_->History("Patient", "p1", PageRequest{1, 3});
  ASSERT_OK(past);
  EXPECT_THAT(past->rows, IsEmpty());
}

TEST_F(StorePagingTest, WalkingHistoryPagesVisitsEveryVersionOnce) {
  for (int i = 0; i < 23; ++i) ASSERT_NO_FATAL_FAILURE(MustPut("Observation", "o1", R"("status":"final")"));
  std::vector<int64_t> want;
  for (int64_t v = 23; v >= 1; --v) want.push_back(v);
  for (size_t limit : {1u, 2u, 5u, 22u, 23u, 24u, 100u}) {
    SCOPED_TRACE(limit);
    int64_t total = 0;
    EXPECT_EQ(HistoryVersions("Observation", "o1", limit, &total), want);
    EXPECT_EQ(total, 23);
  }
  // The unpaged read gives the same.
  auto all = store_->History("Observation", "o1");
  ASSERT_OK(all);
  ASSERT_EQ(all->size(), 23u);
  EXPECT_EQ(all->front().version, 23);
}

TEST_F(StorePagingTest, HistoryCursorSurvivesNewVersions) {
  for (int i = 0; i < 5; ++i) ASSERT_NO_FATAL_FAILURE(MustPut("Patient", "p1"));
  auto first = store_->History("Patient", "p1", PageRequest{std::nullopt, 2});
  ASSERT_OK(first);
  ASSERT_EQ(first->rows.size(), 3u);
  // Updates between two pages are newer than the cursor: the next page goes on with the older versions.
  ASSERT_NO_FATAL_FAILURE(MustPut("Patient", "p1"));
  auto next = store_->History("Patient", "p1", PageRequest{first->rows[1].version, 10});
  ASSERT_OK(next);
  std::vector<int64_t> versions;
  for (const auto& r : next->rows) versions.push_back(r.version);
  EXPECT_THAT(versions, ElementsAre(3, 2, 1));
  EXPECT_EQ(next->total, 6);
}

TEST_F(StorePagingTest, HistoryOfAnUnknownResourceIsNotFound) {
  EXPECT_STATUS(store_->History("Patient", "nope", PageRequest{}), kNotFound, "Patient/nope");
  EXPECT_STATUS(store_->History("Patient", "nope", PageRequest{5, 10}), kNotFound, "Patient/nope");
}

// --- ReadCompartment ---

TEST_F(StorePagingTest, CompartmentPagesInRidOrderWithOneExtraRow) {
  ASSERT_NO_FATAL_FAILURE(MustPut("Patient", "p1"));
  for (int i = 0; i < 9; ++i) ASSERT_NO_FATAL_FAILURE(MustPutObservation("o" + std::to_string(i), "p1"));
  ASSERT_NO_FATAL_FAILURE(MustPutObservation("other", "p2"));

  auto first = store_->ReadCompartment("p1", "", PageRequest{std::nullopt, 4});
  ASSERT_OK(first);
  EXPECT_EQ(first->total, 10);
  ASSERT_EQ(first->rows.size(), 5u);
  for (size_t i = 1; i < first->rows.size(); ++i) EXPECT_LT(first->rows[i - 1].rid, first->rows[i].rid);
  EXPECT_EQ(first->rows[0].type, "Patient");

  auto next = store_->ReadCompartment("p1", "", PageRequest{first->rows[3].rid, 4});
  ASSERT_OK(next);
  ASSERT_EQ(next->rows.size(), 5u);
  EXPECT_GT(next->rows[0].rid, first->rows[3].rid);
  EXPECT_EQ(next->rows[0].rid, first->rows[4].rid);  // the extra row of a page is the first of the next
}

TEST_F(StorePagingTest, WalkingCompartmentPagesVisitsEveryMemberOnce) {
  ASSERT_NO_FATAL_FAILURE(MustPut("Patient", "p1"));
  std::vector<std::string> want = {"Patient/p1"};
  for (int i = 0; i < 30; ++i) {
    const std::string id = "o" + std::to_string(i);
    ASSERT_NO_FATAL_FAILURE(MustPutObservation(id, i % 3 == 0 ? "p2" : "p1"));
    if (i % 3 != 0) want.push_back("Observation/" + id);
    if (i % 4 == 0) {
      ASSERT_NO_FATAL_FAILURE(MustPut("Encounter", "e" + std::to_string(i),
                                      R"("status":"finished","class":{"code":"AMB"},"subject":{"reference":)"
                                      R"("Patient/p1"})"));
      want.push_back("Encounter/e" + std::to_string(i));
    }
  }
  for (size_t limit : {1u, 3u, 7u, 27u, 28u, 1000u}) {
    SCOPED_TRACE(limit);
    int64_t total = 0;
    EXPECT_EQ(CompartmentIds("p1", "", limit, &total), want);
    EXPECT_EQ(total, static_cast<int64_t>(want.size()));
  }
  // Restricted to one type: paged and counted within that type.
  std::vector<std::string> encounters;
  for (const auto& k : want) {
    if (k.starts_with("Encounter/")) encounters.push_back(k);
  }
  int64_t total = 0;
  EXPECT_EQ(CompartmentIds("p1", "Encounter", 2, &total), encounters);
  EXPECT_EQ(total, static_cast<int64_t>(encounters.size()));
  EXPECT_THAT(CompartmentIds("nobody", "", 5, &total), IsEmpty());
  EXPECT_EQ(total, 0);
}

TEST_F(StorePagingTest, CompartmentCursorSurvivesWritesBetweenPages) {
  ASSERT_NO_FATAL_FAILURE(MustPut("Patient", "p1"));
  for (int i = 0; i < 6; ++i) ASSERT_NO_FATAL_FAILURE(MustPutObservation("o" + std::to_string(i), "p1"));
  auto first = store_->ReadCompartment("p1", "", PageRequest{std::nullopt, 3});
  ASSERT_OK(first);
  ASSERT_EQ(first->rows.size(), 4u);
  const int64_t after = first->rows[2].rid;  // Patient/p1, o0, o1 shown
  // Between the pages: an updated member keeps its rid (and its place), a deleted one leaves, a new one is appended.
  ASSERT_NO_FATAL_FAILURE(MustPutObservation("o0", "p1"));
  ASSERT_NO_FATAL_FAILURE(MustPutObservation("o3", "p1"));
  ASSERT_NO_FATAL_FAILURE(MustDelete("Observation", "o4"));
  ASSERT_NO_FATAL_FAILURE(MustPutObservation("new", "p1"));
  auto rest = store_->ReadCompartment("p1", "", PageRequest{after, 100});
  ASSERT_OK(rest);
  std::vector<std::string> ids;
  for (const auto& r : rest->rows) ids.push_back(r.id);
  EXPECT_THAT(ids, ElementsAre("o2", "o3", "o5", "new"));
  EXPECT_EQ(rest->total, 7);  // p1, o0..o3, o5, new
}

}  // namespace
}  // namespace fhirlake::store
