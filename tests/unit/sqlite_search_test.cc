// Tests of FHIR search over SQLite (store/sqlite_search.cc through ResourceStore::Search and Reindex) on a real
// datastore in a temp dir: every parameter type with its modifiers and prefixes, composites within one component,
// chains and _has, _sort with missing values last, keyset paging (every match once, while writing), totals,
// _include/_revinclude, compartments, index maintenance on update and delete, reindexing, and bad page cursors.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "fhir/page_cursor.h"
#include "fhir/resource_parser.h"
#include "search/query.h"
#include "store/resource_store.h"
#include "test_util.h"

namespace fhirlake::store {
namespace {

using ::fhirlake::testutil::TempDir;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::UnorderedElementsAre;
using ::testing::UnorderedElementsAreArray;
using Params = std::vector<std::pair<std::string, std::string>>;

constexpr std::string_view kBase = "http://test.example/datastore/ds/r4";
constexpr const char* kUcum = "http://unitsofmeasure.org";
constexpr const char* kIndexTables[] = {"sp_string", "sp_token",    "sp_reference", "sp_date",
                                        "sp_number", "sp_quantity", "sp_uri",       "sp_composite"};

std::string Coding(const std::string& system, const std::string& code, const std::string& display = "") {
  std::string out = R"({"system":")" + system + R"(","code":")" + code + "\"";
  if (!display.empty()) out += R"(,"display":")" + display + "\"";
  return out + "}";
}

std::string Quantity(const std::string& value, const std::string& unit, const std::string& system = kUcum) {
  std::string out = R"({"value":)" + value + R"(,"unit":")" + unit + "\"";
  if (!system.empty()) out += R"(,"system":")" + system + R"(","code":")" + unit + "\"";
  return out + "}";
}

std::string BloodPressure(const std::string& systolic, const std::string& diastolic) {
  return R"("component":[{"code":{"coding":[)" + Coding("http://loinc.org", "8480-6") + R"(]},"valueQuantity":)" +
         Quantity(systolic, "mm[Hg]") + R"(},{"code":{"coding":[)" + Coding("http://loinc.org", "8462-4") +
         R"(]},"valueQuantity":)" + Quantity(diastolic, "mm[Hg]") + "}]";
}

class SqliteSearchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_NO_FATAL_FAILURE(OpenCatalog());
    ASSERT_NO_FATAL_FAILURE(WriteFixture());
  }

  void OpenCatalog() {
    store_ = nullptr;
    catalog_.reset();
    StoreOptions options;
    options.data_dir = tmp_.str();
    options.busy_timeout_ms = 5000;
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

  // 20 resources: 5 Patients, 2 Practitioners, 1 Organization, 6 Observations, 2 Encounters, 2 RiskAssessments,
  // 1 Provenance, 1 Group.
  void WriteFixture() {
    MustPut("Patient", "p1",
            R"("name":[{"family":"Müller","given":["José"]}],"gender":"male","birthDate":"1950-06-15",)"
            R"("identifier":[{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203",)"
            R"("code":"MR"}]},"system":"http://x.org/mrn","value":"MRN-1"}],)"
            R"("generalPractitioner":[{"reference":"Practitioner/pr1"}],)"
            R"("managingOrganization":{"reference":"Organization/o1"})");
    MustPut("Patient", "p2",
            R"("name":[{"family":"Muller","given":["Anna"]}],"gender":"female","birthDate":"1975",)"
            R"("generalPractitioner":[{"reference":"Practitioner/pr2"}])");
    MustPut("Patient", "p3",
            R"("name":[{"family":"Smith","given":["Abel"]}],"gender":"female",)"
            R"("birthDate":"1980-01-01")");
    MustPut("Patient", "p4", R"("name":[{"family":"Abbott"}])");
    MustPut("Patient", "p5", R"("name":[{"family":"Ångström"}],"gender":"other","birthDate":"1975-05-20")");
    MustPut("Practitioner", "pr1", R"("name":[{"family":"Ortiz"}])");
    MustPut("Practitioner", "pr2", R"("name":[{"family":"Otis"}])");
    MustPut("Organization", "o1", R"("name":"Holyoke Health")");
    MustPut("Observation", "ob1",
            R"("status":"final","code":{"coding":[)" + Coding("http://loinc.org", "8302-2") +
                R"(]},"subject":{"reference":"Patient/p1"},"effectiveDateTime":"2020-01","valueQuantity":)" +
                Quantity("100", "mg"));
    MustPut("Observation", "ob2",
            R"("status":"final","code":{"coding":[)" + Coding("http://loinc.org", "2345-7") +
                R"(]},"subject":{"reference":"Patient/p1"},)"
                R"("effectivePeriod":{"start":"2020-01-01T00:00:00Z","end":"2020-01-31T23:59:59Z"},)"
                R"("valueQuantity":)" +
                Quantity("5.4", "mg"));
    MustPut("Observation", "ob3",
            R"("status":"final","code":{"coding":[)" + Coding("http://loinc.org", "2345-7") +
                R"(]},"subject":{"reference":"Patient/p2"},"effectivePeriod":{"start":"2020-01-15T10:00:00Z"},)"
                R"("valueQuantity":)" +
                Quantity("99.6", "mg"));
    MustPut("Observation", "ob4",
            R"("status":"final","code":{"coding":[)" + Coding("http://loinc.org", "85354-9") +
                R"(],"text":"Blood pressure"},"subject":{"reference":"Patient/p3"},)"
                R"("effectiveDateTime":"2019-06-01",)" +
                BloodPressure("120", "80"));
    // Swapped values: systolic 80, diastolic 120 (a composite must not combine the code of one component with
    // the value of the other).
    MustPut("Observation", "ob5",
            R"("status":"amended","code":{"coding":[)" + Coding("http://loinc.org", "85354-9", "BP panel") +
                R"(]},"subject":{"reference":"Patient/p2"},"effectiveDateTime":"2021-03-04T05:06:07Z",)" +
                BloodPressure("80", "120"));
    MustPut("Observation", "ob6",
            R"("status":"cancelled","code":{"coding":[)" + Coding("http://snomed.info/sct", "123") +
                R"(]},"subject":{"reference":"http://other.example/fhir/Patient/zz"},)"
                R"("hasMember":[{"reference":"Observation/ob1"}])");
    MustPut("Encounter", "e1",
            R"("status":"finished","class":)" + Coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB") +
                R"(,"subject":{"reference":"Patient/p1"},"period":{"start":"2019-01-01","end":"2019-01-02"})");
    MustPut("Encounter", "e2",
            R"("status":"finished","class":)" + Coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB") +
                R"(,"subject":{"reference":"Patient/p3"})");
    MustPut("RiskAssessment", "ra1",
            R"("status":"final","subject":{"reference":"Patient/p1"},"prediction":[{"probabilityDecimal":0.25}])");
    MustPut("RiskAssessment", "ra2",
            R"("status":"final","subject":{"reference":"Patient/p2"},"prediction":[{"probabilityDecimal":0.8}])");
    MustPut("Provenance", "pv1",
            R"("target":[{"reference":"Observation/ob1"}],"recorded":"2020-01-02T00:00:00Z",)"
            R"("agent":[{"who":{"reference":"Practitioner/pr1"}}])");
    MustPut("Group", "g1", R"("type":"person","actual":true,"member":[{"entity":{"reference":"Patient/p1"}}])");
  }

  Result<SearchResult> Search(const std::string& type, const Params& params, std::string_view compartment = "") {
    ASSIGN_OR_RETURN(search::SearchQuery q, search::ParseSearchQuery({type}, params, kBase, /*lenient=*/false));
    return store_->Search(q, compartment);
  }

  static std::vector<std::string> Ids(const std::vector<StoredResource>& rows) {
    std::vector<std::string> out;
    for (const auto& r : rows) out.push_back(r.id);
    return out;
  }

  // The ids of one page (count defaults to 50: every match of this fixture).
  std::vector<std::string> Find(const std::string& type, const Params& params) {
    auto r = Search(type, params);
    std::string shown;
    for (const auto& [n, v] : params) shown += n + "=" + v + "&";
    EXPECT_TRUE(r.ok()) << type << "?" << shown << ": " << r.status().ToString();
    if (!r.ok()) return {};
    EXPECT_TRUE(r->next_page.empty()) << shown;
    if (r->total) EXPECT_EQ(*r->total, static_cast<int64_t>(r->matches.size())) << shown;
    return Ids(r->matches);
  }

  // Follows next cursors to the end; `between` runs after each page. Returns every match in order.
  std::vector<std::string> WalkPages(const std::string& type, Params params,
                                     const std::function<void(int page)>& between = {},
                                     std::vector<std::optional<int64_t>>* totals = nullptr) {
    std::vector<std::string> all;
    std::string page;
    for (int n = 0; n < 100; ++n) {
      Params p = params;
      if (!page.empty()) p.emplace_back("page", page);
      auto r = Search(type, p);
      EXPECT_TRUE(r.ok()) << r.status().ToString();
      if (!r.ok()) return all;
      for (const auto& m : r->matches) all.push_back(m.id);
      if (totals != nullptr) totals->push_back(r->total);
      if (r->next_page.empty()) return all;
      page = r->next_page;
      if (between) between(n);
    }
    ADD_FAILURE() << "paging does not terminate";
    return all;
  }

  // Runs `sql` (one integer result) on the datastore file, next to the store's own connections.
  int64_t SqlInt(const std::string& sql) {
    sqlite3* db = nullptr;
    std::string path = store_->info().path;
    EXPECT_EQ(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK) << path;
    sqlite3_busy_timeout(db, 5000);
    sqlite3_stmt* stmt = nullptr;
    int64_t out = -1;
    EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    if (stmt != nullptr && sqlite3_step(stmt) == SQLITE_ROW) out = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return out;
  }

  void SqlExec(const std::string& sql) {
    sqlite3* db = nullptr;
    std::string path = store_->info().path;
    ASSERT_EQ(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK) << path;
    sqlite3_busy_timeout(db, 5000);
    char* err = nullptr;
    int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
    std::string msg = err ? err : "";
    sqlite3_free(err);
    sqlite3_close(db);
    ASSERT_EQ(rc, SQLITE_OK) << msg;
  }

  std::map<std::string, int64_t> IndexRowCounts() {
    std::map<std::string, int64_t> out;
    for (const char* t : kIndexTables) out[t] = SqlInt(std::string("SELECT count(*) FROM ") + t);
    return out;
  }

  int64_t IndexRowsOf(const std::string& type, const std::string& id) {
    int64_t n = 0;
    for (const char* t : kIndexTables) {
      n += SqlInt(std::string("SELECT count(*) FROM ") + t + " WHERE rid IN (SELECT rid FROM resources WHERE type='" +
                  type + "' AND id='" + id + "')");
    }
    return n;
  }

  TempDir tmp_;
  fhir::ResourceParser parser_;
  std::unique_ptr<DatastoreCatalog> catalog_;
  ResourceStore* store_ = nullptr;
};

// ---- string -------------------------------------------------------------------------------------------------

TEST_F(SqliteSearchTest, StringPrefixIsCaseAndAccentInsensitive) {
  EXPECT_THAT(Find("Patient", {{"family", "mul"}}), UnorderedElementsAre("p1", "p2"));
  EXPECT_THAT(Find("Patient", {{"family", "MÜLLER"}}), UnorderedElementsAre("p1", "p2"));
  EXPECT_THAT(Find("Patient", {{"name", "ab"}}), UnorderedElementsAre("p3", "p4"));  // given Abel, family Abbott
  EXPECT_THAT(Find("Patient", {{"name", "jos"}}), ElementsAre("p1"));
  EXPECT_THAT(Find("Patient", {{"family", "uller"}}), IsEmpty());  // not a prefix
  EXPECT_THAT(Find("Patient", {{"family", "smith,abbott"}}), UnorderedElementsAre("p3", "p4"));
  EXPECT_THAT(Find("Patient", {{"family", "mul"}, {"given", "anna"}}), ElementsAre("p2"));
}

TEST_F(SqliteSearchTest, StringExact) {
  EXPECT_THAT(Find("Patient", {{"family:exact", "Müller"}}), ElementsAre("p1"));
  EXPECT_THAT(Find("Patient", {{"family:exact", "müller"}}), IsEmpty());
  EXPECT_THAT(Find("Patient", {{"family:exact", "Mül"}}), IsEmpty());
}

TEST_F(SqliteSearchTest, StringContains) {
  EXPECT_THAT(Find("Patient", {{"name:contains", "NGSTR"}}), ElementsAre("p5"));
  EXPECT_THAT(Find("Patient", {{"family:contains", "ller"}}), UnorderedElementsAre("p1", "p2"));
  EXPECT_THAT(Find("Organization", {{"name:contains", "yoke he"}}), ElementsAre("o1"));
}

TEST_F(SqliteSearchTest, StringMissing) {
  EXPECT_THAT(Find("Patient", {{"given:missing", "true"}}), UnorderedElementsAre("p4", "p5"));
  EXPECT_THAT(Find("Patient", {{"given:missing", "false"}}), UnorderedElementsAre("p1", "p2", "p3"));
}

// ---- token --------------------------------------------------------------------------------------------------

TEST_F(SqliteSearchTest, TokenForms) {
  EXPECT_THAT(Find("Patient", {{"gender", "female"}}), UnorderedElementsAre("p2", "p3"));
  EXPECT_THAT(Find("Patient", {{"gender", "female,other"}}), UnorderedElementsAre("p2", "p3", "p5"));
  EXPECT_THAT(Find("Patient", {{"identifier", "http://x.org/mrn|MRN-1"}}), ElementsAre("p1"));
  EXPECT_THAT(Find("Patient", {{"identifier", "MRN-1"}}), ElementsAre("p1"));
  EXPECT_THAT(Find("Patient", {{"identifier", "|MRN-1"}}), IsEmpty());  // it has a system
  EXPECT_THAT(Find("Patient", {{"identifier", "http://x.org/mrn|"}}), ElementsAre("p1"));
  EXPECT_THAT(Find("Patient", {{"identifier", "http://other|MRN-1"}}), IsEmpty());
  EXPECT_THAT(Find("Observation", {{"code", "2345-7"}}), UnorderedElementsAre("ob2", "ob3"));
  EXPECT_THAT(Find("Observation", {{"code", "http://loinc.org|2345-7,http://loinc.org|8302-2"}}),
              UnorderedElementsAre("ob1", "ob2", "ob3"));
  EXPECT_THAT(Find("Observation", {{"code", "http://loinc.org|"}}),
              UnorderedElementsAre("ob1", "ob2", "ob3", "ob4", "ob5"));
  EXPECT_THAT(Find("Observation", {{"status", "final"}, {"code", "2345-7"}}), UnorderedElementsAre("ob2", "ob3"));
}

TEST_F(SqliteSearchTest, TokenNotMatchesResourcesWithoutAValue) {
  EXPECT_THAT(Find("Patient", {{"gender:not", "female"}}), UnorderedElementsAre("p1", "p4", "p5"));
  EXPECT_THAT(Find("Patient", {{"gender:not", "female,male"}}), UnorderedElementsAre("p4", "p5"));
}

TEST_F(SqliteSearchTest, TokenMissing) {
  EXPECT_THAT(Find("Patient", {{"gender:missing", "true"}}), ElementsAre("p4"));
  EXPECT_THAT(Find("Patient", {{"gender:missing", "false"}}), UnorderedElementsAre("p1", "p2", "p3", "p5"));
}

TEST_F(SqliteSearchTest, TokenTextAndOfType) {
  EXPECT_THAT(Find("Observation", {{"code:text", "blood"}}), ElementsAre("ob4"));
  EXPECT_THAT(Find("Observation", {{"code:text", "bp pan"}}), ElementsAre("ob5"));  // Coding.display
  EXPECT_THAT(Find("Patient", {{"identifier:of-type", "http://terminology.hl7.org/CodeSystem/v2-0203|MR|MRN-1"}}),
              ElementsAre("p1"));
  EXPECT_THAT(Find("Patient", {{"identifier:of-type", "http://terminology.hl7.org/CodeSystem/v2-0203|MR|MRN-2"}}),
              IsEmpty());
}

TEST_F(SqliteSearchTest, IdAndLastUpdated) {
  EXPECT_THAT(Find("Patient", {{"_id", "p1,p3,nosuch"}}), UnorderedElementsAre("p1", "p3"));
  EXPECT_THAT(Find("Patient", {{"_id:not", "p1,p3"}}), UnorderedElementsAre("p2", "p4", "p5"));
  EXPECT_THAT(Find("Patient", {{"_lastUpdated", "gt2000"}}).size(), 5u);
  EXPECT_THAT(Find("Patient", {{"_lastUpdated", "lt2000"}}), IsEmpty());
}

// ---- reference ----------------------------------------------------------------------------------------------

TEST_F(SqliteSearchTest, Reference) {
  EXPECT_THAT(Find("Observation", {{"subject", "Patient/p1"}}), UnorderedElementsAre("ob1", "ob2"));
  EXPECT_THAT(Find("Observation", {{"subject", "p1"}}), UnorderedElementsAre("ob1", "ob2"));
  EXPECT_THAT(Find("Observation", {{"subject:Patient", "p2"}}), UnorderedElementsAre("ob3", "ob5"));
  EXPECT_THAT(Find("Observation", {{"subject:Group", "p2"}}), IsEmpty());
  EXPECT_THAT(Find("Observation", {{"patient", "p2"}}), UnorderedElementsAre("ob3", "ob5"));
  EXPECT_THAT(Find("Observation", {{"subject", std::string(kBase) + "/Patient/p1"}}),
              UnorderedElementsAre("ob1", "ob2"));
  EXPECT_THAT(Find("Observation", {{"subject", "http://other.example/fhir/Patient/zz"}}), ElementsAre("ob6"));
  EXPECT_THAT(Find("Observation", {{"subject", "zz"}}), IsEmpty());  // another server's resource is not an id here
  EXPECT_THAT(Find("Patient", {{"general-practitioner", "Practitioner/pr1,Practitioner/pr2"}}),
              UnorderedElementsAre("p1", "p2"));
  EXPECT_THAT(Find("Patient", {{"general-practitioner:missing", "true"}}), UnorderedElementsAre("p3", "p4", "p5"));
}

TEST_F(SqliteSearchTest, UrlReferencesAreIndexed) {
  // Regression: a reference that is not Type/id (another server's URL, urn:, a canonical) was bound as NULL into the
  // NOT NULL type column and dropped by INSERT OR IGNORE, so it could never be found.
  EXPECT_EQ(SqlInt("SELECT count(*) FROM sp_reference WHERE type=''"), 2);  // ob6's subject and patient
  MustPut(
      "Observation", "ob7",
      R"("status":"final","code":{"text":"x"},"subject":{"reference":"urn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427"})");
  EXPECT_THAT(Find("Observation", {{"subject", "urn:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427"}}), ElementsAre("ob7"));
  EXPECT_THAT(Find("Observation", {{"subject:missing", "true"}}), IsEmpty());
  auto r = Search("Observation", {{"_id", "ob6,ob7"}, {"_include", "Observation:subject"}});
  ASSERT_OK(r);
  EXPECT_THAT(r->included, IsEmpty());  // nothing of this server to include
}

// ---- date ---------------------------------------------------------------------------------------------------

TEST_F(SqliteSearchTest, DatePrefixesOnDates) {
  // p1 1950-06-15, p2 1975, p3 1980-01-01, p4 none, p5 1975-05-20.
  EXPECT_THAT(Find("Patient", {{"birthdate", "1975"}}), UnorderedElementsAre("p2", "p5"));
  EXPECT_THAT(Find("Patient", {{"birthdate", "eq1975-05"}}), ElementsAre("p5"));
  EXPECT_THAT(Find("Patient", {{"birthdate", "ne1975"}}), UnorderedElementsAre("p1", "p3"));
  EXPECT_THAT(Find("Patient", {{"birthdate", "gt1975"}}), ElementsAre("p3"));
  EXPECT_THAT(Find("Patient", {{"birthdate", "lt1975"}}), ElementsAre("p1"));
  EXPECT_THAT(Find("Patient", {{"birthdate", "ge1975"}}), UnorderedElementsAre("p2", "p3", "p5"));
  EXPECT_THAT(Find("Patient", {{"birthdate", "le1975"}}), UnorderedElementsAre("p1", "p2", "p5"));
  EXPECT_THAT(Find("Patient", {{"birthdate", "sa1975"}}), ElementsAre("p3"));
  EXPECT_THAT(Find("Patient", {{"birthdate", "eb1975"}}), ElementsAre("p1"));
  // 1975 overlaps 1975-05 on both sides: gt and lt of 1975-05.
  EXPECT_THAT(Find("Patient", {{"birthdate", "gt1975-05"}}), UnorderedElementsAre("p2", "p3"));
  EXPECT_THAT(Find("Patient", {{"birthdate", "lt1975-05"}}), UnorderedElementsAre("p1", "p2"));
  EXPECT_THAT(Find("Patient", {{"birthdate", "ge1960"}, {"birthdate", "lt1976"}}), UnorderedElementsAre("p2", "p5"));
  EXPECT_THAT(Find("Patient", {{"birthdate", "1950-06-15,1980-01-01"}}), UnorderedElementsAre("p1", "p3"));
}

TEST_F(SqliteSearchTest, DatePrefixesOnPeriods) {
  // ob1 2020-01, ob2 Jan 2020 as a Period, ob3 from 2020-01-15T10:00Z open-ended, ob4 2019-06-01,
  // ob5 2021-03-04T05:06:07Z, ob6 none.
  EXPECT_THAT(Find("Observation", {{"date", "2020-01"}}), UnorderedElementsAre("ob1", "ob2"));
  EXPECT_THAT(Find("Observation", {{"date", "ne2020-01"}}), UnorderedElementsAre("ob3", "ob4", "ob5"));
  EXPECT_THAT(Find("Observation", {{"date", "gt2020-02"}}), UnorderedElementsAre("ob3", "ob5"));
  EXPECT_THAT(Find("Observation", {{"date", "lt2019-07"}}), ElementsAre("ob4"));
  EXPECT_THAT(Find("Observation", {{"date", "ge2020-01-15"}}), UnorderedElementsAre("ob1", "ob2", "ob3", "ob5"));
  EXPECT_THAT(Find("Observation", {{"date", "le2020-01-15"}}), UnorderedElementsAre("ob1", "ob2", "ob4"));
  EXPECT_THAT(Find("Observation", {{"date", "sa2020-01-10"}}), UnorderedElementsAre("ob3", "ob5"));
  EXPECT_THAT(Find("Observation", {{"date", "eb2020"}}), ElementsAre("ob4"));
  EXPECT_THAT(Find("Observation", {{"date", "eb2021"}}), UnorderedElementsAre("ob1", "ob2", "ob4"));
  EXPECT_THAT(Find("Observation", {{"date", "2021-03-04T05:06:07Z"}}), ElementsAre("ob5"));
  EXPECT_THAT(Find("Observation", {{"date", "2021-03-04T06:06+01:00"}}), ElementsAre("ob5"));
  EXPECT_THAT(Find("Encounter", {{"date", "2019-01"}}), ElementsAre("e1"));
  EXPECT_THAT(Find("Observation", {{"date:missing", "true"}}), ElementsAre("ob6"));
}

// ---- number and quantity ------------------------------------------------------------------------------------

TEST_F(SqliteSearchTest, Number) {
  EXPECT_THAT(Find("RiskAssessment", {{"probability", "0.25"}}), ElementsAre("ra1"));
  EXPECT_THAT(Find("RiskAssessment", {{"probability", "0.3"}}), ElementsAre("ra1"));  // [0.25, 0.35)
  EXPECT_THAT(Find("RiskAssessment", {{"probability", "0.30"}}), IsEmpty());          // [0.295, 0.305)
  EXPECT_THAT(Find("RiskAssessment", {{"probability", "gt0.5"}}), ElementsAre("ra2"));
  EXPECT_THAT(Find("RiskAssessment", {{"probability", "le0.25"}}), ElementsAre("ra1"));
  EXPECT_THAT(Find("RiskAssessment", {{"probability", "lt0.25"}}), IsEmpty());
  EXPECT_THAT(Find("RiskAssessment", {{"probability", "ne0.25"}}), ElementsAre("ra2"));
  EXPECT_THAT(Find("RiskAssessment", {{"probability", "ge0"}}), UnorderedElementsAre("ra1", "ra2"));
}

TEST_F(SqliteSearchTest, Quantity) {
  // ob1 100 mg, ob2 5.4 mg, ob3 99.6 mg (all UCUM).
  EXPECT_THAT(Find("Observation", {{"value-quantity", "100"}}), UnorderedElementsAre("ob1", "ob3"));
  EXPECT_THAT(Find("Observation", {{"value-quantity", "100.0"}}), ElementsAre("ob1"));
  EXPECT_THAT(Find("Observation", {{"value-quantity", "gt99.6"}}), ElementsAre("ob1"));
  EXPECT_THAT(Find("Observation", {{"value-quantity", "5.4|http://unitsofmeasure.org|mg"}}), ElementsAre("ob2"));
  EXPECT_THAT(Find("Observation", {{"value-quantity", "5.4||mg"}}), ElementsAre("ob2"));
  EXPECT_THAT(Find("Observation", {{"value-quantity", "5.4|http://other|mg"}}), IsEmpty());
  EXPECT_THAT(Find("Observation", {{"value-quantity", "5.4||g"}}), IsEmpty());
  EXPECT_THAT(Find("Observation", {{"value-quantity", "lt6||mg"}}), ElementsAre("ob2"));
  EXPECT_THAT(Find("Observation", {{"value-quantity", "ap100"}}), UnorderedElementsAre("ob1", "ob3"));
}

// ---- composite ----------------------------------------------------------------------------------------------

TEST_F(SqliteSearchTest, CompositeMatchesWithinOneComponent) {
  // ob4: systolic 120, diastolic 80; ob5: systolic 80, diastolic 120.
  EXPECT_THAT(Find("Observation", {{"component-code-value-quantity", "http://loinc.org|8480-6$gt100"}}),
              ElementsAre("ob4"));
  EXPECT_THAT(Find("Observation", {{"component-code-value-quantity", "http://loinc.org|8462-4$gt100"}}),
              ElementsAre("ob5"));
  EXPECT_THAT(Find("Observation", {{"component-code-value-quantity", "8480-6$80"}}), ElementsAre("ob5"));
  EXPECT_THAT(Find("Observation", {{"component-code-value-quantity", "8480-6$gt200,8462-4$lt90"}}), ElementsAre("ob4"));
  EXPECT_THAT(Find("Observation", {{"component-code-value-quantity", "8480-6$gt200"}}), IsEmpty());
  EXPECT_THAT(Find("Observation", {{"code-value-quantity", "http://loinc.org|2345-7$lt10"}}), ElementsAre("ob2"));
}

// ---- chains and _has ----------------------------------------------------------------------------------------

TEST_F(SqliteSearchTest, Chain) {
  EXPECT_THAT(Find("Observation", {{"subject:Patient.name", "smith"}}), ElementsAre("ob4"));
  EXPECT_THAT(Find("Observation", {{"patient.family", "mul"}}), UnorderedElementsAre("ob1", "ob2", "ob3", "ob5"));
  EXPECT_THAT(Find("Encounter", {{"patient.birthdate", "ge1970"}}), ElementsAre("e2"));
  EXPECT_THAT(Find("Observation", {{"subject:Patient.gender", "female"}, {"code", "2345-7"}}), ElementsAre("ob3"));
}

TEST_F(SqliteSearchTest, ChainSkipsDeletedTargets) {
  MustDelete("Patient", "p3");
  EXPECT_THAT(Find("Observation", {{"subject:Patient.name", "smith"}}), IsEmpty());
}

TEST_F(SqliteSearchTest, Has) {
  EXPECT_THAT(Find("Patient", {{"_has:Observation:patient:code", "2345-7"}}), UnorderedElementsAre("p1", "p2"));
  EXPECT_THAT(Find("Patient", {{"_has:Observation:subject:status", "amended"}}), ElementsAre("p2"));
  EXPECT_THAT(Find("Patient", {{"_has:Observation:patient:code", "2345-7"}, {"gender", "male"}}), ElementsAre("p1"));
  EXPECT_THAT(Find("Practitioner", {{"_has:Patient:general-practitioner:gender", "female"}}), ElementsAre("pr2"));
  MustDelete("Observation", "ob3");
  EXPECT_THAT(Find("Patient", {{"_has:Observation:patient:code", "2345-7"}}), ElementsAre("p1"));
}

// ---- _sort --------------------------------------------------------------------------------------------------

TEST_F(SqliteSearchTest, SortWithMissingValuesLast) {
  EXPECT_THAT(Find("Patient", {{"_sort", "birthdate"}}), ElementsAre("p1", "p2", "p5", "p3", "p4"));
  // Descending by the highest value: 1980-01-01, end of 1975, 1975-05-20, 1950; p4 (none) still last.
  EXPECT_THAT(Find("Patient", {{"_sort", "-birthdate"}}), ElementsAre("p3", "p2", "p5", "p1", "p4"));
  EXPECT_THAT(Find("Patient", {{"_sort", "gender,-birthdate"}}), ElementsAre("p3", "p2", "p1", "p5", "p4"));
  // Ties in storage order.
  EXPECT_THAT(Find("Patient", {{"_sort", "family"}}), ElementsAre("p4", "p5", "p1", "p2", "p3"));
  EXPECT_THAT(Find("Patient", {{"_sort", "-family"}}), ElementsAre("p3", "p1", "p2", "p5", "p4"));
  EXPECT_THAT(Find("Patient", {{"_sort", "-_id"}}), ElementsAre("p5", "p4", "p3", "p2", "p1"));
  EXPECT_THAT(Find("Observation", {{"_sort", "-value-quantity"}}),
              ElementsAre("ob1", "ob3", "ob2", "ob4", "ob5", "ob6"));
  EXPECT_THAT(Find("Observation", {{"_sort", "value-quantity"}}),
              ElementsAre("ob2", "ob3", "ob1", "ob4", "ob5", "ob6"));
}

// ---- paging -------------------------------------------------------------------------------------------------

TEST_F(SqliteSearchTest, PagingVisitsEveryMatchOnceInOrder) {
  std::vector<std::optional<int64_t>> totals;
  EXPECT_THAT(WalkPages("Patient", {{"_sort", "birthdate"}, {"_count", "2"}}, {}, &totals),
              ElementsAre("p1", "p2", "p5", "p3", "p4"));
  EXPECT_THAT(totals, ElementsAre(5, 5, 5));
  EXPECT_THAT(WalkPages("Patient", {{"_sort", "-family"}, {"_count", "2"}}), ElementsAre("p3", "p1", "p2", "p5", "p4"));
  EXPECT_THAT(WalkPages("Observation", {{"_count", "2"}}), ElementsAre("ob1", "ob2", "ob3", "ob4", "ob5", "ob6"));
  EXPECT_THAT(WalkPages("Observation", {{"_count", "1"}, {"code", "http://loinc.org|"}}),
              ElementsAre("ob1", "ob2", "ob3", "ob4", "ob5"));
  EXPECT_THAT(WalkPages("Observation", {{"_count", "2"}, {"_sort", "-date"}}),
              ElementsAre("ob3", "ob5", "ob1", "ob2", "ob4", "ob6"));
}

TEST_F(SqliteSearchTest, PagingWhileUpdating) {
  // Updates that keep the match and the sort key: every match once, in order.
  std::vector<std::optional<int64_t>> totals;
  auto ids = WalkPages(
      "Patient", {{"_sort", "birthdate"}, {"_count", "2"}},
      [&](int page) {
        MustPut("Patient", page == 0 ? "p1" : "p3",
                page == 0 ? R"("name":[{"family":"Müller"}],"gender":"male","birthDate":"1950-06-15","active":true)"
                          : R"("name":[{"family":"Smith"}],"gender":"female","birthDate":"1980-01-01")");
        MustPut("Patient", "p4", R"("name":[{"family":"Abbott"}],"active":true)");
      },
      &totals);
  EXPECT_THAT(ids, ElementsAre("p1", "p2", "p5", "p3", "p4"));
  EXPECT_THAT(totals, ElementsAre(5, 5, 5));  // the total of the first page, carried
  // In storage order, with a resource created between pages: it comes at the end.
  ids = WalkPages("Observation", {{"_count", "2"}, {"status", "final"}}, [&](int page) {
    if (page == 0) MustPut("Observation", "ob7", R"("status":"final","code":{"text":"x"})");
    if (page == 1) MustPut("Observation", "ob1", R"("status":"final","code":{"text":"updated"})");
  });
  EXPECT_THAT(ids, ElementsAre("ob1", "ob2", "ob3", "ob4", "ob7"));
}

TEST_F(SqliteSearchTest, TotalNoneAndSummaryCount) {
  auto none = Search("Patient", {{"_total", "none"}, {"_count", "2"}});
  ASSERT_OK(none);
  EXPECT_FALSE(none->total.has_value());
  EXPECT_EQ(none->matches.size(), 2u);
  auto count = Search("Patient", {{"_summary", "count"}, {"gender", "female"}});
  ASSERT_OK(count);
  EXPECT_EQ(count->total, 2);
  EXPECT_THAT(count->matches, IsEmpty());
  auto zero = Search("Patient", {{"_count", "0"}});
  ASSERT_OK(zero);
  EXPECT_EQ(zero->total, 5);
  EXPECT_THAT(zero->matches, IsEmpty());
  EXPECT_TRUE(zero->next_page.empty());
}

// A search whose one criterion drives it counts its total on the index rows alone: the count must agree with the
// matches through updates, deletes and values repeated within one resource (two codings of one code).
TEST_F(SqliteSearchTest, TotalOfASingleCriterionAgreesWithTheMatches) {
  auto total_of = [&](std::vector<std::pair<std::string, std::string>> params) -> int64_t {
    params.emplace_back("_summary", "count");
    auto r = Search("Observation", params);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? r->total.value_or(-1) : -1;
  };
  const int64_t before = total_of({{"code", "http://loinc.org|2345-7"}});
  EXPECT_EQ(before, static_cast<int64_t>(Find("Observation", {{"code", "http://loinc.org|2345-7"}}).size()));
  EXPECT_GT(before, 1);
  MustPut("Observation", "ob-dup",
          R"("status":"final","code":{"coding":[)" + Coding("http://loinc.org", "2345-7") + "," +
              Coding("http://other.org", "2345-7") + R"(]},"subject":{"reference":"Patient/p3"})");
  EXPECT_EQ(total_of({{"code", "2345-7"}}), static_cast<int64_t>(Find("Observation", {{"code", "2345-7"}}).size()));
  EXPECT_EQ(total_of({{"code", "http://loinc.org|2345-7"}}), before + 1);
  MustDelete("Observation", "ob-dup");
  MustDelete("Observation", "ob2");
  EXPECT_EQ(total_of({{"code", "http://loinc.org|2345-7"}}), before - 1);
  MustPut("Observation", "ob3", R"("status":"final","code":{"text":"changed"},"subject":{"reference":"Patient/p2"})");
  EXPECT_EQ(total_of({{"code", "http://loinc.org|2345-7"}}), before - 2);
  EXPECT_EQ(total_of({{"code", "http://loinc.org|2345-7"}}),
            static_cast<int64_t>(Find("Observation", {{"code", "http://loinc.org|2345-7"}}).size()));
}

// ---- parameters that share rows (ParamDef::stored_in) ---------------------------------------------------------

TEST_F(SqliteSearchTest, SharedParametersAnswerAsTheirOwnRowsWould) {
  // patient = subject.where(resolve() is Patient): subject's Patient rows, plus patient's own row for another
  // server's Patient (ob6), which has no type in the index.
  EXPECT_THAT(Find("Observation", {{"patient", "p1"}}), UnorderedElementsAre("ob1", "ob2"));
  EXPECT_THAT(Find("Observation", {{"patient", "Patient/p2"}}), UnorderedElementsAre("ob3", "ob5"));
  EXPECT_THAT(Find("Observation", {{"patient", "http://other.example/fhir/Patient/zz"}}), ElementsAre("ob6"));
  EXPECT_THAT(Find("Observation", {{"patient:missing", "true"}}), IsEmpty());
  MustPut("Observation", "ob-group", R"("status":"final","code":{"text":"g"},"subject":{"reference":"Group/g1"})");
  EXPECT_THAT(Find("Observation", {{"patient:missing", "true"}}), ElementsAre("ob-group"));
  EXPECT_THAT(Find("Observation", {{"subject", "Group/g1"}}), ElementsAre("ob-group"));
  EXPECT_THAT(Find("Observation", {{"patient:Patient", "p3"}, {"_sort", "-patient"}}), ElementsAre("ob4"));
  EXPECT_THAT(Find("Observation", {{"code", "2345-7"}, {"_sort", "patient"}}), ElementsAre("ob2", "ob3"));
  EXPECT_THAT(Find("Observation", {{"patient.family", "muller"}}), UnorderedElementsAre("ob1", "ob2", "ob3", "ob5"));
  EXPECT_THAT(Find("Patient", {{"_has:Observation:patient:code", "85354-9"}}), UnorderedElementsAre("p2", "p3"));

  auto inc = Search("Observation", {{"code", "2345-7"}, {"_include", "Observation:patient"}});
  ASSERT_OK(inc);
  EXPECT_THAT(Ids(inc->included), UnorderedElementsAre("p1", "p2"));
  auto rev = Search("Patient", {{"_id", "p2"}, {"_revinclude", "Observation:patient"}});
  ASSERT_OK(rev);
  EXPECT_THAT(Ids(rev->included), UnorderedElementsAre("ob3", "ob5"));

  // combo-code = code | component-code; combo-code-value-quantity = code-value-quantity | component-...
  EXPECT_THAT(Find("Observation", {{"combo-code", "8480-6"}}), UnorderedElementsAre("ob4", "ob5"));
  EXPECT_THAT(Find("Observation", {{"combo-code", "http://loinc.org|2345-7,8462-4"}}),
              UnorderedElementsAre("ob2", "ob3", "ob4", "ob5"));
  EXPECT_THAT(Find("Observation", {{"combo-code-value-quantity", "8480-6$gt100"}}), ElementsAre("ob4"));
  EXPECT_THAT(Find("Observation", {{"combo-code-value-quantity", "8302-2$100|http://unitsofmeasure.org|mg"}}),
              ElementsAre("ob1"));
  EXPECT_THAT(Find("Observation", {{"combo-value-quantity", "lt10"}}), ElementsAre("ob2"));
  EXPECT_THAT(Find("Observation", {{"combo-value-quantity", "ge120"}}), UnorderedElementsAre("ob4", "ob5"));
  // The composite's components stay within one parameter's tuple: code of one, value of another never pair up.
  EXPECT_THAT(Find("Observation", {{"combo-code-value-quantity", "85354-9$120"}}), IsEmpty());

  // Across types (system search): the parameter of each type, with its own sharing.
  auto sys = search::ParseSearchQuery({"Observation", "Encounter"}, {{"patient", "p1"}}, kBase, false);
  ASSERT_OK(sys);
  auto found = store_->Search(*sys);
  ASSERT_OK(found);
  EXPECT_THAT(Ids(found->matches), UnorderedElementsAre("ob1", "ob2", "e1"));
}

TEST_F(SqliteSearchTest, ChainsThatDriveThePagePageEveryMatchOnce) {
  // patient.family is selective on Patient, so the chain drives: the Patients first, then what refers to them.
  EXPECT_THAT(WalkPages("Observation", {{"patient.family", "muller"}, {"_count", "1"}}),
              ElementsAre("ob1", "ob2", "ob3", "ob5"));
  EXPECT_THAT(WalkPages("Observation", {{"subject:Patient.family", "muller"}, {"code", "2345-7"}, {"_count", "1"}}),
              ElementsAre("ob2", "ob3"));
  auto r = Search("Observation", {{"patient.family", "muller"}, {"_total", "accurate"}, {"_count", "1"}});
  ASSERT_OK(r);
  EXPECT_EQ(r->total, 4);
  // A deleted target no longer matches; a chain whose target criterion cannot drive (a date) still answers.
  MustDelete("Patient", "p2");
  EXPECT_THAT(Find("Observation", {{"patient.family", "muller"}}), ElementsAre("ob1", "ob2"));
  EXPECT_THAT(Find("Observation", {{"patient.birthdate", "lt1960"}}), ElementsAre("ob1", "ob2"));
}

// ---- _include / _revinclude ---------------------------------------------------------------------------------

TEST_F(SqliteSearchTest, Include) {
  auto r = Search("Observation", {{"code", "2345-7"}, {"_include", "Observation:subject"}});
  ASSERT_OK(r);
  EXPECT_THAT(Ids(r->matches), UnorderedElementsAre("ob2", "ob3"));
  EXPECT_THAT(Ids(r->included), UnorderedElementsAre("p1", "p2"));
  EXPECT_EQ(r->total, 2);  // included resources are not counted

  auto typed = Search("Observation", {{"_id", "ob2"}, {"_include", "Observation:subject:Group"}});
  ASSERT_OK(typed);
  EXPECT_THAT(typed->included, IsEmpty());

  auto iterate = Search(
      "Observation",
      {{"code", "2345-7"}, {"_include", "Observation:subject"}, {"_include:iterate", "Patient:general-practitioner"}});
  ASSERT_OK(iterate);
  EXPECT_THAT(Ids(iterate->included), UnorderedElementsAre("p1", "p2", "pr1", "pr2"));

  // Without :iterate, an include from another type adds nothing (and is rejected by the parser).
  auto no_iterate = Search("Observation", {{"code", "2345-7"}, {"_include", "Patient:general-practitioner"}});
  EXPECT_STATUS(no_iterate, kInvalid, "_include");
}

TEST_F(SqliteSearchTest, IncludeSkipsDeletedAndMatches) {
  MustDelete("Patient", "p2");
  auto r = Search("Observation", {{"code", "2345-7"}, {"_include", "Observation:subject"}});
  ASSERT_OK(r);
  EXPECT_THAT(Ids(r->included), ElementsAre("p1"));
  // A resource that is both a match and an include target appears once, as a match.
  auto self = Search("Observation", {{"_id", "ob1,ob6"}, {"_include", "Observation:has-member"}});
  ASSERT_OK(self);
  EXPECT_THAT(Ids(self->matches), UnorderedElementsAre("ob1", "ob6"));
  EXPECT_THAT(self->included, IsEmpty());
}

TEST_F(SqliteSearchTest, RevInclude) {
  auto r = Search("Patient", {{"_id", "p1"}, {"_revinclude", "Observation:subject"}});
  ASSERT_OK(r);
  EXPECT_THAT(Ids(r->matches), ElementsAre("p1"));
  EXPECT_THAT(Ids(r->included), UnorderedElementsAre("ob1", "ob2"));

  auto iterate = Search(
      "Patient", {{"_id", "p1"}, {"_revinclude", "Observation:subject"}, {"_revinclude:iterate", "Provenance:target"}});
  ASSERT_OK(iterate);
  EXPECT_THAT(Ids(iterate->included), UnorderedElementsAre("ob1", "ob2", "pv1"));

  auto group = Search("Patient", {{"_id", "p1,p2"}, {"_revinclude", "Group:member"}});
  ASSERT_OK(group);
  EXPECT_THAT(Ids(group->included), ElementsAre("g1"));
}

// ---- compartment --------------------------------------------------------------------------------------------

TEST_F(SqliteSearchTest, CompartmentRestriction) {
  auto all = Search("Observation", {}, "p1");
  ASSERT_OK(all);
  EXPECT_THAT(Ids(all->matches), UnorderedElementsAre("ob1", "ob2"));
  EXPECT_EQ(all->total, 2);
  auto coded = Search("Observation", {{"code", "2345-7"}}, "p1");
  ASSERT_OK(coded);
  EXPECT_THAT(Ids(coded->matches), ElementsAre("ob2"));
  auto other = Search("Observation", {{"code", "2345-7"}}, "p2");
  ASSERT_OK(other);
  EXPECT_THAT(Ids(other->matches), ElementsAre("ob3"));
  auto nobody = Search("Observation", {}, "nosuchpatient");
  ASSERT_OK(nobody);
  EXPECT_THAT(nobody->matches, IsEmpty());
}

// ---- index maintenance --------------------------------------------------------------------------------------

TEST_F(SqliteSearchTest, UpdateReplacesIndexRows) {
  int64_t before = IndexRowsOf("Patient", "p3");
  EXPECT_GT(before, 0);
  MustPut("Patient", "p3",
          R"("name":[{"family":"Jones","given":["Abel"]}],"gender":"female",)"
          R"("birthDate":"1980-01-01")");
  EXPECT_THAT(Find("Patient", {{"family", "smith"}}), IsEmpty());
  EXPECT_THAT(Find("Patient", {{"family", "jones"}}), ElementsAre("p3"));
  EXPECT_EQ(IndexRowsOf("Patient", "p3"), before);  // replaced, not added to
  MustPut("Patient", "p3", R"("name":[{"family":"Jones"}])");
  EXPECT_THAT(Find("Patient", {{"birthdate", "1980"}}), IsEmpty());
  EXPECT_THAT(Find("Patient", {{"gender:missing", "true"}}), UnorderedElementsAre("p3", "p4"));
}

TEST_F(SqliteSearchTest, DeleteRemovesIndexRows) {
  EXPECT_GT(IndexRowsOf("Patient", "p4"), 0);
  MustDelete("Patient", "p4");
  EXPECT_EQ(IndexRowsOf("Patient", "p4"), 0);
  EXPECT_THAT(Find("Patient", {{"family", "abbott"}}), IsEmpty());
  EXPECT_THAT(Find("Patient", {{"gender:missing", "true"}}), IsEmpty());
  EXPECT_THAT(Find("Patient", {{"_sort", "birthdate"}}), ElementsAre("p1", "p2", "p5", "p3"));
  // Re-created after the delete: indexed again.
  MustPut("Patient", "p4", R"("name":[{"family":"Abbott"}])");
  EXPECT_THAT(Find("Patient", {{"family", "abbott"}}), ElementsAre("p4"));
}

TEST_F(SqliteSearchTest, ReindexOnOpenWhenTheHashIsMissing) {
  std::map<std::string, int64_t> before = IndexRowCounts();
  EXPECT_GT(before["sp_string"], 0);
  EXPECT_GT(before["sp_composite"], 0);
  EXPECT_EQ(SqlInt("SELECT count(*) FROM meta WHERE key='search_index_hash'"), 1);
  ASSERT_NO_FATAL_FAILURE(OpenCatalog());  // reopening an up-to-date store does not reindex
  EXPECT_EQ(IndexRowCounts(), before);

  store_ = nullptr;
  catalog_.reset();
  ASSERT_NO_FATAL_FAILURE(OpenCatalog());
  ASSERT_NO_FATAL_FAILURE(SqlExec("DELETE FROM meta WHERE key='search_index_hash'"));
  ASSERT_NO_FATAL_FAILURE(OpenCatalog());
  EXPECT_EQ(SqlInt("SELECT count(*) FROM meta WHERE key='search_index_hash'"), 1);
  EXPECT_EQ(IndexRowCounts(), before);  // rebuilt once, not duplicated
  EXPECT_THAT(Find("Patient", {{"family", "mul"}}), UnorderedElementsAre("p1", "p2"));
  EXPECT_THAT(Find("Observation", {{"component-code-value-quantity", "http://loinc.org|8480-6$gt100"}}),
              ElementsAre("ob4"));
}

TEST_F(SqliteSearchTest, ReindexRebuildsLostRows) {
  ASSERT_NO_FATAL_FAILURE(SqlExec("DELETE FROM sp_string; DELETE FROM sp_token"));
  EXPECT_THAT(Find("Patient", {{"family", "mul"}}), IsEmpty());
  auto n = store_->Reindex();
  ASSERT_OK(n);
  EXPECT_EQ(*n, 20);  // every current resource
  EXPECT_THAT(Find("Patient", {{"family", "mul"}}), UnorderedElementsAre("p1", "p2"));
  std::map<std::string, int64_t> after = IndexRowCounts();
  auto again = store_->Reindex();
  ASSERT_OK(again);
  EXPECT_EQ(*again, 20);
  EXPECT_EQ(IndexRowCounts(), after);
  MustDelete("Patient", "p5");
  auto fewer = store_->Reindex();
  ASSERT_OK(fewer);
  EXPECT_EQ(*fewer, 19);
}

TEST_F(SqliteSearchTest, BulkLoadRebuildsTheLookupIndexesAndSearchesStayCorrectMeanwhile) {
  constexpr const char* kLookupCount = "SELECT count(*) FROM sqlite_master WHERE type='index' AND name LIKE 'sp_%_k'";
  EXPECT_EQ(SqlInt(kLookupCount), 8);
  const std::map<std::string, int64_t> rows_before = IndexRowCounts();
  // Incremental: nothing dropped.
  auto incremental = store_->BeginBulkLoad(ResourceStore::BulkIndexing::kImmediate, int64_t{1} << 40);
  ASSERT_OK(incremental);
  EXPECT_FALSE(*incremental);
  EXPECT_EQ(SqlInt(kLookupCount), 8);
  // Auto: an input small beside the database keeps them; a large one drops them.
  auto small = store_->BeginBulkLoad(ResourceStore::BulkIndexing::kAuto, 1);
  ASSERT_OK(small);
  EXPECT_FALSE(*small);
  EXPECT_EQ(SqlInt(kLookupCount), 8);
  auto large = store_->BeginBulkLoad(ResourceStore::BulkIndexing::kAuto, int64_t{1} << 40);
  ASSERT_OK(large);
  EXPECT_TRUE(*large);
  EXPECT_EQ(SqlInt(kLookupCount), 0);
  // Without them, writes index and searches answer as before.
  MustPut("Patient", "p6", R"("name":[{"family":"Mullins"}],"gender":"other")");
  EXPECT_THAT(Find("Patient", {{"family", "mul"}}), UnorderedElementsAre("p1", "p2", "p6"));
  EXPECT_THAT(Find("Observation", {{"component-code-value-quantity", "http://loinc.org|8480-6$gt100"}}),
              ElementsAre("ob4"));
  ASSERT_OK(store_->EndBulkLoad());
  EXPECT_EQ(SqlInt(kLookupCount), 8);
  EXPECT_THAT(Find("Patient", {{"family", "mul"}}), UnorderedElementsAre("p1", "p2", "p6"));
  EXPECT_THAT(Find("Patient", {{"family", "mullins"}}), ElementsAre("p6"));
  MustDelete("Patient", "p6");
  EXPECT_EQ(IndexRowCounts(), rows_before);

  // A load that stops before EndBulkLoad: the next open builds them, and the index is unchanged.
  auto deferred = store_->BeginBulkLoad(ResourceStore::BulkIndexing::kDeferred, 0);
  ASSERT_OK(deferred);
  EXPECT_TRUE(*deferred);
  EXPECT_EQ(SqlInt(kLookupCount), 0);
  ASSERT_NO_FATAL_FAILURE(OpenCatalog());
  EXPECT_EQ(SqlInt(kLookupCount), 8);
  EXPECT_EQ(IndexRowCounts(), rows_before);
  EXPECT_THAT(Find("Patient", {{"family", "mul"}}), UnorderedElementsAre("p1", "p2"));
}

// ---- regressions from the bad-input probe ------------------------------------------------------------------

TEST_F(SqliteSearchTest, SqlFailuresDoNotQuoteTheSql) {
  // Regression: 1000 criteria (or 2000 sort keys) made SQL SQLite would not prepare, and the 500's diagnostics
  // quoted the whole statement. The parser now bounds queries; past it, a failure must still not show the SQL.
  auto parsed = search::ParseSearchQuery({"Patient"}, {{"given", "x"}}, kBase, false);
  ASSERT_OK(parsed);
  search::SearchQuery q = *parsed;
  for (int i = 0; i < 1200; ++i) q.criteria.push_back(parsed->criteria[0]);
  auto r = store_->Search(q);
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), ::testing::Not(::testing::HasSubstr("SELECT")));
  EXPECT_THAT(r.status().message(), ::testing::Not(::testing::HasSubstr("sp_string")));
}

TEST_F(SqliteSearchTest, CompositeWithManyAlternatives) {
  // Regression: each alternative was its own probe (100 of them took minutes on 16k Observations); they now share
  // one. The results stay per tuple.
  std::string alts = "8480-6$gt200";
  for (int i = 0; i < 98; ++i) alts += ",nosuch$" + std::to_string(i);
  EXPECT_THAT(Find("Observation", {{"component-code-value-quantity", alts + ",8462-4$lt90"}}), ElementsAre("ob4"));
  EXPECT_THAT(Find("Observation", {{"component-code-value-quantity", alts + ",8462-4$gt90"}}), ElementsAre("ob5"));
  EXPECT_THAT(Find("Observation", {{"component-code-value-quantity", alts}}), IsEmpty());
}

TEST_F(SqliteSearchTest, SortKeyTooLongToPageNamesSort) {
  MustPut("Patient", "p6", R"("name":[{"family":")" + std::string(1200, 'a') + R"("}])");
  EXPECT_STATUS(Search("Patient", {{"_sort", "family"}, {"_count", "1"}}), kInvalid, "_sort");
}

// ---- bad cursors --------------------------------------------------------------------------------------------

TEST_F(SqliteSearchTest, ForgedOrGarbledCursorIsInvalid) {
  auto first = Search("Patient", {{"_sort", "birthdate"}, {"_count", "2"}});
  ASSERT_OK(first);
  ASSERT_FALSE(first->next_page.empty());
  const std::string good = first->next_page;
  EXPECT_OK(Search("Patient", {{"_sort", "birthdate"}, {"_count", "2"}, {"page", good}}));
  std::vector<std::string> bad = {
      "garbage!",
      "x",
      good.substr(0, good.size() / 2),
      good + "A",
      std::string(5000, 'A'),
      fhir::EncodePageCursor("history", 3),
      fhir::EncodePageCursorText("search", ""),
      fhir::EncodePageCursorText("search", "5;abc;i1"),
      fhir::EncodePageCursorText("search", "5;-1;i1"),
      fhir::EncodePageCursorText("search", "5;1;zz"),
      fhir::EncodePageCursorText("search", "5;1;t0g"),
      fhir::EncodePageCursorText("search", "5;1;i1;i2"),
      fhir::EncodePageCursorText("search", "5;1;r1e99999"),
      fhir::EncodePageCursorText("search", std::string("5;1;i1\0", 7)),
  };
  for (const auto& page : bad) {
    EXPECT_STATUS(Search("Patient", {{"_sort", "birthdate"}, {"_count", "2"}, {"page", page}}), kInvalid, "cursor")
        << page;
  }
  // A cursor of a sorted search given to an unsorted one (another number of keys).
  EXPECT_STATUS(Search("Patient", {{"_count", "2"}, {"page", good}}), kInvalid, "cursor");
}

TEST_F(SqliteSearchTest, CursorOfAnotherSearchIsInvalid) {
  // Regression: a cursor was only checked for its number of sort keys, so one from another search (another sort,
  // type, criteria or compartment) started that search at a foreign position instead of being a 400.
  auto first = Search("Patient", {{"_sort", "birthdate"}, {"_count", "2"}});
  ASSERT_OK(first);
  const std::string page = first->next_page;
  ASSERT_FALSE(page.empty());
  EXPECT_STATUS(Search("Patient", {{"_sort", "family"}, {"_count", "2"}, {"page", page}}), kInvalid, "cursor");
  EXPECT_STATUS(Search("Patient", {{"_sort", "birthdate"}, {"gender", "female"}, {"_count", "2"}, {"page", page}}),
                kInvalid, "cursor");
  auto unsorted = Search("Patient", {{"_count", "2"}});
  ASSERT_OK(unsorted);
  EXPECT_STATUS(Search("Observation", {{"_count", "2"}, {"page", unsorted->next_page}}), kInvalid, "cursor");
  auto in_p1 = Search("Observation", {{"_count", "1"}}, "p1");
  ASSERT_OK(in_p1);
  ASSERT_FALSE(in_p1->next_page.empty());
  EXPECT_STATUS(Search("Observation", {{"_count", "1"}, {"page", in_p1->next_page}}, "p2"), kInvalid, "cursor");
  EXPECT_OK(Search("Observation", {{"_count", "1"}, {"page", in_p1->next_page}}, "p1"));
  // The page size may change between pages; parameter order does not matter.
  EXPECT_OK(Search("Patient", {{"_count", "3"}, {"_sort", "birthdate"}, {"page", page}}));
  // A cursor without the fingerprint (made before it existed) still reads.
  auto legacy = Search("Patient", {{"_count", "2"}, {"page", fhir::EncodePageCursorText("search", "5;0")}});
  ASSERT_OK(legacy);
  EXPECT_THAT(Ids(legacy->matches), ElementsAre("p1", "p2"));
  EXPECT_STATUS(Search("Patient", {{"_count", "2"}, {"page", fhir::EncodePageCursorText("search", "5;0;q")}}), kInvalid,
                "cursor");
}

}  // namespace
}  // namespace fhirlake::store
