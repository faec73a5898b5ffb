// Tests for batch and transaction Bundles (src/api/transaction.h) on a real SQLite datastore, seen through a store
// that counts how often the write lock is taken: every entry is parsed and validated before BeginWrite, so a bad
// entry, however late in the Bundle, fails it without the lock ever being held.
#include "api/transaction.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <simdjson.h>

#include <atomic>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fhir/resource_parser.h"
#include "store/resource_store.h"
#include "test_util.h"

namespace fhirlake::api {
namespace {

using ::fhirlake::testutil::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Forwards everything to a real store and counts BeginWrite calls (each takes the datastore's write lock).
class CountingStore final : public store::ResourceStore {
 public:
  explicit CountingStore(store::ResourceStore* inner) : inner_(inner) {}
  int begin_writes() const { return begin_writes_.load(); }

  const store::DatastoreInfo& info() const override { return inner_->info(); }
  std::string status() const override { return inner_->status(); }
  Status SetStatus(const std::string& status) override { return inner_->SetStatus(status); }
  Result<std::map<std::string, std::string>> Tags() override { return inner_->Tags(); }
  Status SetTags(const std::map<std::string, std::string>& tags) override { return inner_->SetTags(tags); }
  Result<std::unique_ptr<store::StoreTransaction>> BeginWrite() override {
    ++begin_writes_;
    return inner_->BeginWrite();
  }
  Result<store::StoredResource> Read(std::string_view type, std::string_view id) override {
    return inner_->Read(type, id);
  }
  Result<store::StoredResource> ReadVersion(std::string_view type, std::string_view id, int64_t version) override {
    return inner_->ReadVersion(type, id, version);
  }
  Result<store::StoredResource> ReadAsOf(std::string_view type, std::string_view id, int64_t seq) override {
    return inner_->ReadAsOf(type, id, seq);
  }
  Result<ResourcePage> History(std::string_view type, std::string_view id, const PageRequest& page) override {
    return inner_->History(type, id, page);
  }
  Result<std::vector<std::string>> CompartmentsOf(std::string_view type, std::string_view id) override {
    return inner_->CompartmentsOf(type, id);
  }
  Result<int64_t> CountCurrent() override { return inner_->CountCurrent(); }
  Result<ResourcePage> ReadCompartment(std::string_view patient_id, std::string_view type,
                                       const PageRequest& page) override {
    return inner_->ReadCompartment(patient_id, type, page);
  }
  Result<store::SearchResult> Search(const search::SearchQuery& query, std::string_view patient) override {
    return inner_->Search(query, patient);
  }
  Result<int64_t> Reindex() override { return inner_->Reindex(); }
  Result<bool> BeginBulkLoad(BulkIndexing mode, int64_t bytes) override { return inner_->BeginBulkLoad(mode, bytes); }
  Status EndBulkLoad() override { return inner_->EndBulkLoad(); }
  Result<ResourcePage> HistoryAll(std::string_view type, const HistoryPageRequest& page) override {
    return inner_->HistoryAll(type, page);
  }
  Result<std::vector<store::StoredResource>> ReferencedBy(const std::vector<int64_t>& rids, size_t limit) override {
    return inner_->ReferencedBy(rids, limit);
  }
  Result<store::Snapshot> TakeSnapshot() override { return inner_->TakeSnapshot(); }
  Result<store::Snapshot> TakeSnapshotWithFilters(const std::string& job_id,
                                                  const std::vector<TypeFilter>& filters) override {
    return inner_->TakeSnapshotWithFilters(job_id, filters);
  }
  Result<store::TypeRange> RangeOf(const std::string& type, store::ScanScope scope,
                                   const std::string& job_id) override {
    return inner_->RangeOf(type, scope, job_id);
  }
  Result<ScanProgress> Scan(const store::ScanRequest& request,
                            const std::function<Status(const store::ScanRow&)>& on_row) override {
    return inner_->Scan(request, on_row);
  }
  Status MaterializeGroupScope(const std::string& job_id, const std::string& group_id,
                               const std::vector<std::string>& patient_ids, bool include_referenced,
                               const store::Snapshot& snapshot) override {
    return inner_->MaterializeGroupScope(job_id, group_id, patient_ids, include_referenced, snapshot);
  }
  Status MaterializeReferencedScope(const std::string& job_id, const store::Snapshot& snapshot) override {
    return inner_->MaterializeReferencedScope(job_id, snapshot);
  }
  Result<std::vector<std::string>> TypesInJobScope(const std::string& job_id) override {
    return inner_->TypesInJobScope(job_id);
  }
  Result<store::ResourceStore::ScanProgress> ScanCompartment(
      const store::CompartmentScanRequest& request,
      const std::function<Status(const store::ScanRow&)>& on_row) override {
    return inner_->ScanCompartment(request, on_row);
  }
  Status AddToScope(const std::string& key, const std::string& type, const std::vector<int64_t>& rids) override {
    return inner_->AddToScope(key, type, rids);
  }
  Status AddAssociations(const std::string& job_id, const std::vector<store::Association>& rows) override {
    return inner_->AddAssociations(job_id, rows);
  }
  Status SelectAssociated(const std::string& job_id, bool latest_only) override {
    return inner_->SelectAssociated(job_id, latest_only);
  }
  store::JobStore& jobs() override { return inner_->jobs(); }

 private:
  store::ResourceStore* inner_;
  std::atomic<int> begin_writes_{0};
};

class TransactionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    store::StoreOptions options;
    options.data_dir = tmp_.str();
    auto catalog = store::OpenSqliteCatalog(options);
    ASSERT_OK(catalog);
    catalog_ = std::move(catalog).value();
    store_ = std::make_unique<CountingStore>(catalog_->Default());
  }

  // Writes directly to the store (not counted by the tests' expectations: they read begin_writes() relative).
  void MustPut(const std::string& json, const std::string& id) {
    fhir::ResourceParser parser;
    auto parsed = parser.Parse(json, nullptr);
    ASSERT_OK(parsed);
    auto txn = catalog_->Default()->BeginWrite();
    ASSERT_OK(txn);
    ASSERT_OK((*txn)->Put(*parsed, id, std::nullopt));
    ASSERT_OK((*txn)->Commit());
  }

  static std::string Bundle(std::string_view type, const std::vector<std::string>& entries) {
    std::string out = R"({"resourceType":"Bundle","type":")" + std::string(type) + R"(","entry":[)";
    for (size_t i = 0; i < entries.size(); ++i) out += (i ? "," : "") + entries[i];
    return out + "]}";
  }
  static std::string Post(std::string_view resource, std::string_view type, std::string_view full_url = "",
                          std::string_view if_none_exist = "") {
    std::string out = "{";
    if (!full_url.empty()) out += R"("fullUrl":")" + std::string(full_url) + R"(",)";
    out +=
        R"("resource":)" + std::string(resource) + R"(,"request":{"method":"POST","url":")" + std::string(type) + "\"";
    if (!if_none_exist.empty()) out += R"(,"ifNoneExist":")" + std::string(if_none_exist) + "\"";
    return out + "}}";
  }
  static std::string Patient(int i) {
    return R"({"resourceType":"Patient","name":[{"family":"F)" + std::to_string(i) + R"("}]})";
  }

  std::string Reference(const std::string& type, const std::string& id, std::string_view pointer) {
    auto r = store_->Read(type, id);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return "";
    simdjson::dom::parser dom;
    simdjson::dom::element doc;
    std::string_view s;
    if (dom.parse(simdjson::padded_string(r->json)).get(doc) || doc.at_pointer(pointer).get_string().get(s)) {
      ADD_FAILURE() << pointer << " in " << r->json;
      return "";
    }
    return std::string(s);
  }

  TempDir tmp_;
  std::unique_ptr<store::DatastoreCatalog> catalog_;
  std::unique_ptr<CountingStore> store_;
};

// --- validation before the write lock (regression: entries were parsed inside the store transaction) ---

TEST_F(TransactionTest, AMalformedEntryLateInABigTransactionFailsWithoutTakingTheWriteLock) {
  const std::vector<std::pair<std::string, std::string>> bad_entries = {
      {R"({"resourceType":"Observation","status":"final","valueInteger":2147483648})",
       "Observation.valueInteger: 2147483648 is out of range"},
      {R"({"resourceType":"Observation","status":"final","valueQuantity":{"value":"7"}})", "must be a JSON number"},
      {R"({"resourceType":"Observation","status":"final","status":"final"})", "Duplicate JSON key 'status'"},
      {R"({"resourceType":"Observation","status":"final","code":{"text":"\x"}})", "Invalid JSON"},
      {R"({"resourceType":"Observation","id":"bad_id"})", "Invalid resource id"},
  };
  for (const auto& [bad, message] : bad_entries) {
    SCOPED_TRACE(bad);
    std::vector<std::string> entries;
    for (int i = 0; i < 500; ++i) entries.push_back(Post(Patient(i), "Patient", "urn:uuid:p" + std::to_string(i)));
    entries.push_back(Post(bad, "Observation"));
    auto r = ProcessBundle(*store_, Bundle("transaction", entries));
    EXPECT_STATUS(r, kInvalid, "Bundle.entry[500].resource: ");
    EXPECT_STATUS(r, kInvalid, message);
    EXPECT_EQ(store_->begin_writes(), 0);
  }
  auto count = store_->CountCurrent();
  ASSERT_OK(count);
  EXPECT_EQ(*count, 0);
}

TEST_F(TransactionTest, AResourceOfTheWrongTypeFailsBeforeTheWriteLock) {
  auto r = ProcessBundle(
      *store_, Bundle("transaction", {Post(Patient(1), "Patient"), Post(R"({"resourceType":"Patient"})", "Basic")}));
  EXPECT_STATUS(r, kInvalid, "Bundle.entry[1]: the resource is a 'Patient' but request.url names 'Basic'");
  EXPECT_EQ(store_->begin_writes(), 0);
}

TEST_F(TransactionTest, AGetOrDeleteEntryResourceMustBeWellFormed) {
  const std::string del = R"({"resource":{"resourceType":"Patient","active":tru},)"
                          R"("request":{"method":"DELETE","url":"Patient/x"}})";
  EXPECT_STATUS(ProcessBundle(*store_, Bundle("transaction", {del})), kInvalid, "Bundle.entry[0].resource");
  EXPECT_EQ(store_->begin_writes(), 0);
}

TEST_F(TransactionTest, AValidTransactionTakesTheWriteLockOnce) {
  std::vector<std::string> entries;
  for (int i = 0; i < 50; ++i) entries.push_back(Post(Patient(i), "Patient", "urn:uuid:p" + std::to_string(i)));
  entries.push_back(
      Post(R"({"resourceType":"Observation","status":"final","subject":{"reference":"urn:uuid:p7"}})", "Observation"));
  auto r = ProcessBundle(*store_, Bundle("transaction", entries));
  ASSERT_OK(r);
  EXPECT_EQ(store_->begin_writes(), 1);
  auto count = store_->CountCurrent();
  ASSERT_OK(count);
  EXPECT_EQ(*count, 51);
}

// --- duplicate keys (regression: `PUT Patient/victim` overwrote Observation/victim) ---

TEST_F(TransactionTest, ASecondResourceTypeCannotRetargetAnEntry) {
  ASSERT_NO_FATAL_FAILURE(MustPut(R"({"resourceType":"Observation","id":"victim","status":"final"})", "victim"));
  const std::string entry =
      R"({"resource":{"resourceType":"Patient","id":"victim","resourceType":"Observation","status":"cancelled"},)"
      R"("request":{"method":"PUT","url":"Patient/victim"}})";
  EXPECT_STATUS(ProcessBundle(*store_, Bundle("transaction", {entry})), kInvalid,
                "Bundle.entry[0].resource: Duplicate JSON key 'resourceType' in Patient");
  auto batch = ProcessBundle(*store_, Bundle("batch", {entry}));
  ASSERT_OK(batch);
  EXPECT_THAT(*batch, HasSubstr("400 Bad Request"));
  EXPECT_THAT(*batch, HasSubstr("Duplicate JSON key 'resourceType'"));
  auto victim = store_->Read("Observation", "victim");
  ASSERT_OK(victim);
  EXPECT_EQ(victim->version, 1);
  EXPECT_THAT(victim->json, HasSubstr(R"("status":"final")"));
  EXPECT_STATUS(store_->Read("Patient", "victim"), kNotFound, "");
  EXPECT_EQ(store_->begin_writes(), 0);  // the batch entry failed before its write lock too
}

// --- conditional references, resolved under the write lock ---

TEST_F(TransactionTest, ConditionalReferencesResolveUnderTheLockAndJoinTheCompartment) {
  ASSERT_NO_FATAL_FAILURE(
      MustPut(R"({"resourceType":"Patient","id":"pa","identifier":[{"system":"s","value":"mrn-1"}]})", "pa"));
  const std::string obs =
      R"({"resourceType":"Observation","id":"o1","status":"final","subject":{"reference":"Patient?identifier=s|mrn-1"}})";
  auto r = ProcessBundle(*store_, Bundle("transaction", {R"({"resource":)" + obs +
                                                         R"(,"request":{"method":"PUT","url":"Observation/o1"}})"}));
  ASSERT_OK(r);
  EXPECT_EQ(store_->begin_writes(), 1);
  EXPECT_EQ(Reference("Observation", "o1", "/subject/reference"), "Patient/pa");
  auto compartments = store_->CompartmentsOf("Observation", "o1");
  ASSERT_OK(compartments);
  EXPECT_THAT(*compartments, ElementsAre("pa"));
}

TEST_F(TransactionTest, AConditionalReferenceMatchingNoneOrSeveralIs412) {
  ASSERT_NO_FATAL_FAILURE(
      MustPut(R"({"resourceType":"Patient","id":"a","identifier":[{"system":"s","value":"twin"}]})", "a"));
  ASSERT_NO_FATAL_FAILURE(
      MustPut(R"({"resourceType":"Patient","id":"b","identifier":[{"system":"s","value":"twin"}]})", "b"));
  auto obs = [](std::string_view criterion) {
    return Post(R"({"resourceType":"Observation","status":"final","subject":{"reference":"Patient?identifier=)" +
                    std::string(criterion) + R"("}})",
                "Observation");
  };
  EXPECT_STATUS(ProcessBundle(*store_, Bundle("transaction", {obs("s|nobody")})), kPreconditionFailed,
                "Conditional reference 'Patient?identifier=s|nobody' matches no resource; it must match exactly one");
  EXPECT_STATUS(ProcessBundle(*store_, Bundle("transaction", {obs("s|twin")})), kPreconditionFailed,
                "matches 2 resources");
  auto batch = ProcessBundle(*store_, Bundle("batch", {obs("s|nobody")}));
  ASSERT_OK(batch);
  EXPECT_THAT(*batch, HasSubstr("412 Precondition Failed"));
  // An unsupported criterion is the client's mistake in the request, found before the lock.
  const int before = store_->begin_writes();
  EXPECT_STATUS(ProcessBundle(*store_, Bundle("transaction", {obs("")})), kInvalid, "has no identifier value");
  EXPECT_EQ(store_->begin_writes(), before);
}

TEST_F(TransactionTest, AReferenceToAConditionalCreateGetsTheMatchedResource) {
  ASSERT_NO_FATAL_FAILURE(
      MustPut(R"({"resourceType":"Patient","id":"existing","identifier":[{"system":"s","value":"v"}]})", "existing"));
  // The Observation comes first and refers to the conditionally created Patient, which already exists.
  auto r = ProcessBundle(
      *store_, Bundle("transaction",
                      {R"({"resource":{"resourceType":"Observation","id":"o2","status":"final","subject":{"reference":)"
                       R"("urn:uuid:new"}},"request":{"method":"PUT","url":"Observation/o2"}})",
                       Post(R"({"resourceType":"Patient","identifier":[{"system":"s","value":"v"}]})", "Patient",
                            "urn:uuid:new", "identifier=s|v")}));
  ASSERT_OK(r);
  EXPECT_EQ(Reference("Observation", "o2", "/subject/reference"), "Patient/existing");
  auto count = store_->CountCurrent();
  ASSERT_OK(count);
  EXPECT_EQ(*count, 2);
}

// --- batch ---

TEST_F(TransactionTest, ABatchEntryThatFailsValidationNeverTakesTheWriteLock) {
  auto r = ProcessBundle(*store_,
                         Bundle("batch", {Post(Patient(1), "Patient"),
                                          Post(R"({"resourceType":"Patient","active":"yes","active":1})", "Patient"),
                                          Post(Patient(3), "Patient")}));
  ASSERT_OK(r);
  EXPECT_EQ(store_->begin_writes(), 2);
  EXPECT_THAT(*r, HasSubstr("Duplicate JSON key 'active'"));
  auto count = store_->CountCurrent();
  ASSERT_OK(count);
  EXPECT_EQ(*count, 2);
}

}  // namespace
}  // namespace fhirlake::api
