// VersionedTransaction: Put and Delete as FHIR defines them, over a StorageTransaction.
#include "store/versioned_transaction.h"

#include "search/extract.h"

namespace fhirlake::store {
namespace {

class VersionedTransaction final : public StoreTransaction {
 public:
  explicit VersionedTransaction(std::unique_ptr<StorageTransaction> storage)
      : storage_(std::move(storage)), last_updated_text_(FormatInstant(storage_->last_updated())) {}

  int64_t seq() const override { return storage_->seq(); }
  EpochMillis last_updated() const override { return storage_->last_updated(); }

  Result<StoredResource> Read(std::string_view type, std::string_view id) override {
    return storage_->ReadCurrent(type, id);
  }

  Result<StoredResource> Put(const fhir::ParsedResource& parsed, std::string_view id, std::optional<int64_t> if_match,
                             WriteOp op, const search::IndexRows* index) override {
    auto current = storage_->ReadCurrent(parsed.type, id);
    if (!current.ok() && current.status().code() != StatusCode::kNotFound) return current.status();
    StoredResource out;
    out.type = parsed.type;
    out.id = std::string(id);
    out.seq = seq();
    out.last_updated = last_updated();
    out.created_by_post = op == WriteOp::kPost;
    if (current.ok()) {
      if (if_match && *if_match != current->version) {
        return Status::PreconditionFailed("If-Match expected version " + std::to_string(*if_match) + " of " +
                                          parsed.type + "/" + std::string(id) + " but the current version is " +
                                          std::to_string(current->version));
      }
      RETURN_IF_ERROR(storage_->ArchiveCurrent(current->rid));
      out.created = current->deleted;
      out.rid = current->rid;
      out.version = current->version + 1;
    } else {
      if (if_match) {
        return Status::PreconditionFailed("If-Match given for " + parsed.type + "/" + std::string(id) +
                                          ", which does not exist");
      }
      out.version = 1;
      out.created = true;
    }
    out.json = fhir::RenderResource(parsed, id, out.version, last_updated_text_);
    ASSIGN_OR_RETURN(out.rid, storage_->WriteCurrent(out, op));
    if (current.ok()) RETURN_IF_ERROR(storage_->EndIndexes(out.rid, /*keep_references=*/false));
    if (index == nullptr) {
      thread_local search::IndexExtractor extractor;
      auto rows = extractor.Extract(out.json);
      if (!rows.ok()) return rows.status().WithContext("indexing " + parsed.type + "/" + std::string(id));
      RETURN_IF_ERROR(storage_->WriteIndexes(parsed, id, out.rid, *rows));
    } else {
      RETURN_IF_ERROR(storage_->WriteIndexes(parsed, id, out.rid, *index));
    }
    return out;
  }

  Result<StoredResource> Delete(std::string_view type, std::string_view id, std::optional<int64_t> if_match) override {
    ASSIGN_OR_RETURN(StoredResource current, storage_->ReadCurrent(type, id));
    if (if_match && *if_match != current.version) {
      return Status::PreconditionFailed("If-Match expected version " + std::to_string(*if_match) + " of " +
                                        std::string(type) + "/" + std::string(id) + " but the current version is " +
                                        std::to_string(current.version));
    }
    if (current.deleted) return current;
    RETURN_IF_ERROR(storage_->ArchiveCurrent(current.rid));
    StoredResource tomb = current;
    tomb.version = current.version + 1;
    tomb.seq = seq();
    tomb.last_updated = last_updated();
    tomb.deleted = true;
    tomb.created_by_post = false;
    tomb.json.clear();
    RETURN_IF_ERROR(storage_->WriteCurrent(tomb, WriteOp::kPut).status());
    // Reference rows stay, and compartment membership ends at this sequence number: an export whose snapshot
    // predates the delete still finds the resource.
    RETURN_IF_ERROR(storage_->EndIndexes(current.rid, /*keep_references=*/true));
    return tomb;
  }

  Result<std::vector<std::string>> FindByIdentifier(std::string_view type, std::string_view system,
                                                    std::string_view value) override {
    return storage_->FindByIdentifier(type, system, value);
  }

  Result<SearchResult> Search(const search::SearchQuery& query) override { return storage_->Search(query); }
  Status Commit() override { return storage_->Commit(); }

 private:
  std::unique_ptr<StorageTransaction> storage_;
  std::string last_updated_text_;
};

}  // namespace

std::unique_ptr<StoreTransaction> NewVersionedTransaction(std::unique_ptr<StorageTransaction> storage) {
  return std::make_unique<VersionedTransaction>(std::move(storage));
}

}  // namespace fhirlake::store
