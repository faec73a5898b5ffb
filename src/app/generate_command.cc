// Generation runs in two phases. The source folder is read once into templates: each resource is minified
// (simdjson On-Demand) into static bytes plus slots where a patient-local id goes, with urn:uuid references
// already resolved to Type/id. Then every clone only copies bytes (static segments and the clone's 36-char ids,
// hashed from seed, clone number and original id) into large per-file buffers written with plain write().
#include "app/generate_command.h"

#include <fcntl.h>
#include <simdjson.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/json_escape.h"
#include "common/status.h"
#include "fhir/bundle.h"
#include "fhir/json_values.h"
#include "fhir/resource_parser.h"

namespace fhirlake::app {
namespace {

namespace fs = std::filesystem;
namespace od = simdjson::ondemand;

constexpr size_t kIdLen = 36;  // ids are UUID-formatted: 8-4-4-4-12 lowercase hex digits
constexpr int kMaxDepth = 64;
constexpr size_t kBufferBytes = size_t{2} << 20;  // per output file, written with one write() when full
constexpr std::string_view kSampleSubdir = "data/synthea-r4-100";

// Resources of these types are shared by all patients even when a patient's Bundle carries them (Synthea
// repeats the Organizations and Practitioners a patient saw): written once, with their original ids.
bool IsSharedType(std::string_view type) {
  return type == "Organization" || type == "Practitioner" || type == "PractitionerRole" || type == "Location";
}

using fhir::JsonError;

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

// ---- ids ---------------------------------------------------------------------------------------------------

// The splitmix64 / murmur3 finaliser: a bijection on 64 bits with good avalanche.
uint64_t Mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

struct IdHash {
  uint64_t hi = 0, lo = 0;
};

IdHash HashOriginalId(std::string_view id) {
  uint64_t a = 0xcbf29ce484222325ULL, b = 0x6a09e667f3bcc909ULL;
  for (unsigned char c : id) {
    a = (a ^ c) * 0x100000001b3ULL;
    b = std::rotl(b ^ c, 7) * 0x9e3779b97f4a7c15ULL;
  }
  return {Mix64(a), Mix64(b ^ id.size())};
}

// Per clone: distinct clones get distinct keys (Mix64 is a bijection and k * odd is one too).
IdHash CloneKey(uint64_t seed, uint64_t k) {
  uint64_t hi = Mix64(Mix64(seed ^ 0x243f6a8885a308d3ULL) + (k + 1) * 0x9e3779b97f4a7c15ULL);
  return {hi, Mix64(hi ^ 0xbb67ae8584caa73bULL)};
}

// Writes the 36-char id of an original id (hash `h`) in clone `key`, formatted as a version 4 UUID.
void FormatId(const IdHash& h, const IdHash& key, char* out) {
  static constexpr char kHex[] = "0123456789abcdef";
  uint64_t hi = (Mix64(h.hi ^ key.hi) & ~0xf000ULL) | 0x4000ULL;
  uint64_t lo = (Mix64(h.lo ^ key.lo) & 0x3fffffffffffffffULL) | 0x8000000000000000ULL;
  int digit = 0;
  for (int i = 0; i < 32; ++i) {
    if (i == 8 || i == 12 || i == 16 || i == 20) out[digit++] = '-';
    uint64_t word = i < 16 ? hi : lo;
    out[digit++] = kHex[(word >> (60 - 4 * (i % 16))) & 0xf];
  }
}

// A seeded Fisher-Yates shuffle of 0..n-1 (splitmix64 stream; the same on every platform).
std::vector<uint32_t> SourceOrder(size_t n, uint64_t seed) {
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  uint64_t state = seed ^ 0x452821e638d01377ULL;
  for (size_t i = n; i > 1; --i) {
    state += 0x9e3779b97f4a7c15ULL;
    auto j = static_cast<size_t>((static_cast<unsigned __int128>(Mix64(state)) * i) >> 64);
    std::swap(order[i - 1], order[j]);
  }
  return order;
}

// ---- the source, as templates --------------------------------------------------------------------------------

struct Slot {
  uint32_t offset;  // in SourcePatient::arena: where the clone's id of `local` goes
  uint32_t local;   // index into SourcePatient::resources
};

struct ResourceTemplate {
  uint32_t type;                  // index into Source::types
  uint32_t begin, end;            // static bytes in SourcePatient::arena
  uint32_t first_slot, end_slot;  // its slots in SourcePatient::slots
};

struct SourcePatient {
  std::string file;
  std::string arena;
  std::vector<Slot> slots;
  std::vector<ResourceTemplate> resources;  // Bundle order; the local index of a resource is its position
  std::vector<IdHash> ids;                  // hash of each resource's original id
  uint32_t patient = 0;                     // local index of the Patient
};

struct SharedResource {
  uint32_t type;
  std::string json;  // minified, references resolved
};

// The patient-local resources of the Bundle being read, by original id and by fullUrl.
struct LocalIds {
  StringMap<uint32_t> by_id;
  StringMap<uint32_t> by_url;
  std::vector<std::string> types;
};

// Minifies one resource into `out`, recording a Slot wherever a patient-local id is written: a string equal to
// a local id (ids, and identifier values Synthea sets to the id), `Type/<local id>`, or the local fullUrl
// (written as Type/<id> under "reference", as urn:uuid:<id> elsewhere). Other urn:uuid references become the
// Type/id of the resource whose fullUrl they name anywhere in the source.
class TemplateWriter {
 public:
  TemplateWriter(const StringMap<std::string>& urns, const LocalIds* locals, std::string* out, std::vector<Slot>* slots)
      : urns_(urns), locals_(locals), out_(out), slots_(slots) {}

  Status Write(od::parser& parser, std::string_view json, const char* allocation_end) {
    od::document doc;
    size_t capacity = static_cast<size_t>(allocation_end - json.data());
    if (auto e = parser.iterate(json.data(), json.size(), capacity).get(doc)) return JsonError(e);
    od::value root;
    if (auto e = doc.get_value().get(root)) return JsonError(e);
    return WriteValue(root, 0, false);
  }

 private:
  Status WriteValue(od::value value, int depth, bool is_reference) {
    if (depth > kMaxDepth) return Status::Invalid("JSON nesting is deeper than 64 levels");
    od::json_type type;
    if (auto e = value.type().get(type)) return JsonError(e);
    switch (type) {
      case od::json_type::object: {
        od::object obj;
        if (auto e = value.get_object().get(obj)) return JsonError(e);
        out_->push_back('{');
        bool first = true;
        for (auto field : obj) {
          std::string_view key;
          if (auto e = field.unescaped_key().get(key)) return JsonError(e);
          if (!first) out_->push_back(',');
          first = false;
          AppendJsonString(out_, key);
          out_->push_back(':');
          RETURN_IF_ERROR(WriteValue(field.value(), depth + 1, key == "reference"));
        }
        out_->push_back('}');
        return Status::Ok();
      }
      case od::json_type::array: {
        od::array arr;
        if (auto e = value.get_array().get(arr)) return JsonError(e);
        out_->push_back('[');
        bool first = true;
        for (auto element : arr) {
          od::value v;
          if (auto e = element.get(v)) return JsonError(e);
          if (!first) out_->push_back(',');
          first = false;
          RETURN_IF_ERROR(WriteValue(v, depth + 1, false));
        }
        out_->push_back(']');
        return Status::Ok();
      }
      case od::json_type::string: {
        std::string_view s;
        if (auto e = value.get_string().get(s)) return JsonError(e);
        WriteString(s, is_reference);
        return Status::Ok();
      }
      default:
        return fhir::AppendScalar(value, type, out_);
    }
  }

  void AddSlot(uint32_t local) { slots_->push_back(Slot{static_cast<uint32_t>(out_->size()), local}); }

  void WriteString(std::string_view s, bool is_reference) {
    if (locals_ != nullptr) {
      if (auto it = locals_->by_id.find(s); it != locals_->by_id.end()) {
        out_->push_back('"');
        AddSlot(it->second);
        out_->push_back('"');
        return;
      }
      if (auto it = locals_->by_url.find(s); it != locals_->by_url.end()) {
        if (is_reference || s.starts_with("urn:uuid:")) {
          out_->push_back('"');
          out_->append(is_reference ? locals_->types[it->second] + "/" : std::string("urn:uuid:"));
          AddSlot(it->second);
          out_->push_back('"');
          return;
        }
      }
      if (size_t slash = s.find('/'); slash != std::string_view::npos) {
        auto it = locals_->by_id.find(s.substr(slash + 1));
        if (it != locals_->by_id.end() && locals_->types[it->second] == s.substr(0, slash)) {
          out_->push_back('"');
          out_->append(s.substr(0, slash + 1));
          AddSlot(it->second);
          out_->push_back('"');
          return;
        }
      }
    }
    if (is_reference) {
      if (auto it = urns_.find(s); it != urns_.end()) {
        AppendJsonString(out_, it->second);
        return;
      }
    }
    AppendJsonString(out_, s);
  }

  const StringMap<std::string>& urns_;
  const LocalIds* locals_;
  std::string* out_;
  std::vector<Slot>* slots_;
};

using fhir::PaddedFile;

struct Entry {
  std::string full_url;
  fhir::TypedId typed;
  std::string_view json;
};

// The source folder: its *.json files in byte order of their names (the order `fhirlake load` uses). A Bundle
// holding exactly one Patient is that patient's; its resources (but the shared types) are cloned. Every other
// resource is shared; a later occurrence of a shared Type/id replaces the earlier one, as in a load. Plain
// Group resources are dropped: they list the source patients, which are not part of the output.
class Source {
 public:
  Status Read(const std::string& dir) {
    std::error_code ec;
    std::vector<std::string> files;
    fs::directory_iterator it(dir, ec);
    for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
      std::error_code type_ec;
      if (it->is_regular_file(type_ec) && it->path().extension() == ".json") files.push_back(it->path().string());
    }
    if (ec) return Status::NotFound("cannot list " + dir + ": " + ec.message());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) RETURN_IF_ERROR(MapUrls(f).WithContext(f));
    for (const auto& f : files) RETURN_IF_ERROR(ReadFile(f).WithContext(f));
    if (patients.empty()) return Status::Invalid(dir + " holds no patient Bundle (a Bundle with one Patient)");
    return Status::Ok();
  }

  uint32_t TypeIndex(std::string_view type) {
    auto it = type_index_.find(type);
    if (it != type_index_.end()) return it->second;
    types.emplace_back(type);
    type_index_.emplace(std::string(type), static_cast<uint32_t>(types.size() - 1));
    return static_cast<uint32_t>(types.size() - 1);
  }

  std::vector<std::string> types;
  std::vector<SourcePatient> patients;
  std::vector<SharedResource> shared;  // in order of first occurrence, content of the last
  size_t dropped_groups = 0;

 private:
  // Reads the entries of a Bundle file (or the single resource of a resource file) with their type and id.
  Result<std::vector<Entry>> Entries(const PaddedFile& file, bool* is_bundle) {
    ASSIGN_OR_RETURN(fhir::TypedId peek, parser_.PeekTypeAndId(file.view(), file.end()));
    std::vector<Entry> out;
    *is_bundle = peek.type == "Bundle";
    if (!*is_bundle) {
      if (peek.type.empty() || peek.id.empty()) return Status::Invalid("a resource without resourceType or id");
      out.push_back(Entry{"", std::move(peek), file.view()});
      return out;
    }
    ASSIGN_OR_RETURN(fhir::BundleView bundle, fhir::ParseBundle(parser_, file.view(), file.end()));
    for (auto& e : bundle.entries) {
      if (e.resource_json.empty()) continue;
      ASSIGN_OR_RETURN(fhir::TypedId typed, parser_.PeekTypeAndId(e.resource_json, file.end()));
      if (typed.id.empty() && e.full_url.starts_with("urn:uuid:")) typed.id = e.full_url.substr(9);
      if (typed.type.empty() || typed.id.empty()) {
        return Status::Invalid("Bundle entry " + std::to_string(out.size()) +
                               ": a resource without resourceType or id");
      }
      out.push_back(Entry{std::move(e.full_url), std::move(typed), e.resource_json});
    }
    return out;
  }

  Status MapUrls(const std::string& path) {
    ASSIGN_OR_RETURN(PaddedFile file, fhir::ReadPaddedFile(path));
    bool is_bundle = false;
    ASSIGN_OR_RETURN(std::vector<Entry> entries, Entries(file, &is_bundle));
    for (const auto& e : entries) {
      if (!e.full_url.empty()) urns_[e.full_url] = e.typed.type + "/" + e.typed.id;
    }
    return Status::Ok();
  }

  Status ReadFile(const std::string& path) {
    ASSIGN_OR_RETURN(PaddedFile file, fhir::ReadPaddedFile(path));
    bool is_bundle = false;
    ASSIGN_OR_RETURN(std::vector<Entry> entries, Entries(file, &is_bundle));
    size_t patient_count = 0;
    for (const auto& e : entries) patient_count += e.typed.type == "Patient";
    if (!is_bundle && entries[0].typed.type == "Group") {
      ++dropped_groups;
      return Status::Ok();
    }
    if (patient_count != 1) {
      for (const auto& e : entries) RETURN_IF_ERROR(AddShared(e, file.end()));
      return Status::Ok();
    }
    SourcePatient sp;
    sp.file = fs::path(path).filename().string();
    LocalIds locals;
    std::vector<const Entry*> local_entries;
    for (const auto& e : entries) {
      if (IsSharedType(e.typed.type)) continue;
      auto index = static_cast<uint32_t>(local_entries.size());
      if (!locals.by_id.emplace(e.typed.id, index).second) {
        return Status::Invalid("two resources with id " + e.typed.id + " in one patient Bundle");
      }
      if (!e.full_url.empty()) locals.by_url.emplace(e.full_url, index);
      locals.types.push_back(e.typed.type);
      local_entries.push_back(&e);
    }
    for (const auto& e : entries) {
      if (IsSharedType(e.typed.type)) RETURN_IF_ERROR(AddShared(e, file.end()));
    }
    TemplateWriter writer(urns_, &locals, &sp.arena, &sp.slots);
    for (const Entry* e : local_entries) {
      ResourceTemplate t;
      t.type = TypeIndex(e->typed.type);
      t.begin = static_cast<uint32_t>(sp.arena.size());
      t.first_slot = static_cast<uint32_t>(sp.slots.size());
      RETURN_IF_ERROR(
          writer.Write(parser_.simdjson_parser(), e->json, file.end()).WithContext(e->typed.type + "/" + e->typed.id));
      t.end = static_cast<uint32_t>(sp.arena.size());
      t.end_slot = static_cast<uint32_t>(sp.slots.size());
      if (e->typed.type == "Patient") sp.patient = static_cast<uint32_t>(sp.resources.size());
      sp.resources.push_back(t);
      sp.ids.push_back(HashOriginalId(e->typed.id));
    }
    sp.arena.shrink_to_fit();
    patients.push_back(std::move(sp));
    return Status::Ok();
  }

  Status AddShared(const Entry& e, const char* allocation_end) {
    SharedResource r{TypeIndex(e.typed.type), {}};
    TemplateWriter writer(urns_, nullptr, &r.json, nullptr);
    RETURN_IF_ERROR(
        writer.Write(parser_.simdjson_parser(), e.json, allocation_end).WithContext(e.typed.type + "/" + e.typed.id));
    std::string key = e.typed.type + "/" + e.typed.id;
    auto [it, inserted] = shared_index_.emplace(key, shared.size());
    if (inserted) {
      shared.push_back(std::move(r));
    } else {
      shared[it->second] = std::move(r);
    }
    return Status::Ok();
  }

  fhir::ResourceParser parser_;
  StringMap<std::string> urns_;  // fullUrl -> Type/id over all files
  StringMap<uint32_t> type_index_;
  StringMap<size_t> shared_index_;  // Type/id -> index into shared
};

// ---- output ------------------------------------------------------------------------------------------------

class OutFile {
 public:
  OutFile() = default;
  OutFile(const OutFile&) = delete;
  OutFile& operator=(const OutFile&) = delete;
  ~OutFile() {
    if (fd_ >= 0) ::close(fd_);
  }

  Status Open(const std::string& path) {
    path_ = path;
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) return Status::Unavailable("cannot create " + path + ": " + std::strerror(errno));
    if (!buf_) {
      cap_ = kBufferBytes;
      buf_ = std::make_unique<char[]>(cap_);
    }
    size_ = 0;
    return Status::Ok();
  }

  // Makes room for `n` more bytes at cursor().
  Status Reserve(size_t n) {
    if (cap_ - size_ >= n) return Status::Ok();
    RETURN_IF_ERROR(Flush());
    if (n > cap_) {
      cap_ = n;
      buf_ = std::make_unique<char[]>(cap_);
    }
    return Status::Ok();
  }
  char* cursor() { return buf_.get() + size_; }
  void Advance(size_t n) { size_ += n; }

  Status Append(std::string_view s) {
    RETURN_IF_ERROR(Reserve(s.size()));
    std::memcpy(cursor(), s.data(), s.size());
    Advance(s.size());
    return Status::Ok();
  }

  Status Close() {
    if (fd_ < 0) return Status::Ok();
    Status st = Flush();
    int rc = ::close(fd_);
    fd_ = -1;
    RETURN_IF_ERROR(st);
    if (rc != 0) return Status::Unavailable("cannot close " + path_ + ": " + std::strerror(errno));
    return Status::Ok();
  }

  uint64_t bytes() const { return written_ + size_; }

 private:
  Status Flush() {
    const char* p = buf_.get();
    size_t left = size_;
    while (left > 0) {
      ssize_t n = ::write(fd_, p, left);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Status::Unavailable("cannot write " + path_ + ": " + std::strerror(errno));
      p += n;
      left -= static_cast<size_t>(n);
    }
    written_ += size_;
    size_ = 0;
    return Status::Ok();
  }

  std::string path_;
  int fd_ = -1;
  std::unique_ptr<char[]> buf_;
  size_t cap_ = 0, size_ = 0;
  uint64_t written_ = 0;
};

// Copies resource `r` of `sp` with the clone's ids (`ids`: kIdLen chars per local resource) to `dst`.
char* EmitResource(const SourcePatient& sp, const ResourceTemplate& r, const char* ids, char* dst) {
  const char* arena = sp.arena.data();
  uint32_t pos = r.begin;
  for (uint32_t s = r.first_slot; s < r.end_slot; ++s) {
    const Slot& slot = sp.slots[s];
    std::memcpy(dst, arena + pos, slot.offset - pos);
    dst += slot.offset - pos;
    std::memcpy(dst, ids + size_t{slot.local} * kIdLen, kIdLen);
    dst += kIdLen;
    pos = slot.offset;
  }
  std::memcpy(dst, arena + pos, r.end - pos);
  return dst + (r.end - pos);
}

size_t MaxResourceBytes(const ResourceTemplate& r) { return (r.end - r.begin) + kIdLen * (r.end_slot - r.first_slot); }

class Generator {
 public:
  Generator(const GenerateOptions& options, Source* source)
      : options_(options),
        source_(source),
        order_(SourceOrder(source->patients.size(), options.seed)),
        files_(source->types.size() + 1),
        counts_(source->types.size() + 1) {
    size_t most = 0;
    for (const auto& sp : source->patients) most = std::max(most, sp.resources.size());
    ids_.resize(most * kIdLen);
  }

  Status Run() {
    for (const auto& r : source_->shared) {
      ASSIGN_OR_RETURN(OutFile * f, FileFor(r.type));
      RETURN_IF_ERROR(f->Reserve(r.json.size() + 1));
      RETURN_IF_ERROR(f->Append(r.json));
      RETURN_IF_ERROR(f->Append("\n"));
      ++counts_[r.type];
    }
    for (int64_t k = 0; k < options_.patients; ++k) {
      RETURN_IF_ERROR(options_.bundles ? WriteBundle(k) : WriteClone(k));
    }
    RETURN_IF_ERROR(WriteGroups());
    for (auto& f : files_) {
      if (f) RETURN_IF_ERROR(f->Close());
    }
    return Status::Ok();
  }

  int64_t resources() const {
    int64_t n = 0;
    for (int64_t c : counts_) n += c;
    return n;
  }
  size_t types() const {
    return static_cast<size_t>(std::count_if(counts_.begin(), counts_.end(), [](int64_t c) { return c > 0; }));
  }
  uint64_t bytes() const {
    uint64_t b = bundle_.bytes();
    for (const auto& f : files_) {
      if (f) b += f->bytes();
    }
    return b;
  }

 private:
  Result<OutFile*> FileFor(uint32_t type) {
    auto& f = files_[type];
    if (!f) {
      f = std::make_unique<OutFile>();
      RETURN_IF_ERROR(f->Open((fs::path(options_.out_dir) / (TypeName(type) + ".ndjson")).string()));
    }
    return f.get();
  }

  // Group is not a type of every source; it gets the last slot when missing.
  uint32_t GroupType() {
    auto it = std::find(source_->types.begin(), source_->types.end(), "Group");
    return it == source_->types.end() ? static_cast<uint32_t>(source_->types.size())
                                      : static_cast<uint32_t>(it - source_->types.begin());
  }
  std::string TypeName(uint32_t type) const { return type < source_->types.size() ? source_->types[type] : "Group"; }

  // Fills ids_ for clone k and returns its source patient.
  const SourcePatient& PrepareClone(int64_t k) {
    const SourcePatient& sp = source_->patients[order_[static_cast<size_t>(k) % order_.size()]];
    IdHash key = CloneKey(options_.seed, static_cast<uint64_t>(k));
    for (size_t i = 0; i < sp.ids.size(); ++i) FormatId(sp.ids[i], key, &ids_[i * kIdLen]);
    return sp;
  }

  Status WriteClone(int64_t k) {
    const SourcePatient& sp = PrepareClone(k);
    for (const auto& r : sp.resources) {
      OutFile* f = files_[r.type].get();
      if (f == nullptr) {
        ASSIGN_OR_RETURN(f, FileFor(r.type));
      }
      RETURN_IF_ERROR(f->Reserve(MaxResourceBytes(r) + 1));
      char* start = f->cursor();
      char* end = EmitResource(sp, r, ids_.data(), start);
      *end++ = '\n';
      f->Advance(static_cast<size_t>(end - start));
      ++counts_[r.type];
    }
    return Status::Ok();
  }

  // bundles/patient-<k>.json: a transaction Bundle of PUTs (the ids are part of the references).
  Status WriteBundle(int64_t k) {
    if (k == 0) {
      std::error_code ec;
      fs::create_directories(fs::path(options_.out_dir) / "bundles", ec);
      if (ec) return Status::Unavailable("cannot create " + options_.out_dir + "/bundles: " + ec.message());
    }
    const SourcePatient& sp = PrepareClone(k);
    RETURN_IF_ERROR(
        bundle_.Open((fs::path(options_.out_dir) / "bundles" / ("patient-" + std::to_string(k) + ".json")).string()));
    RETURN_IF_ERROR(bundle_.Append(R"({"resourceType":"Bundle","type":"transaction","entry":[)"));
    for (size_t i = 0; i < sp.resources.size(); ++i) {
      const auto& r = sp.resources[i];
      const std::string& type = source_->types[r.type];
      std::string_view id(&ids_[i * kIdLen], kIdLen);
      RETURN_IF_ERROR(bundle_.Reserve(MaxResourceBytes(r) + type.size() + 2 * kIdLen + 96));
      char* start = bundle_.cursor();
      char* d = start;
      auto put = [&d](std::string_view s) {
        std::memcpy(d, s.data(), s.size());
        d += s.size();
      };
      put(i == 0 ? R"({"fullUrl":"urn:uuid:)" : R"(,{"fullUrl":"urn:uuid:)");
      put(id);
      put(R"(","resource":)");
      d = EmitResource(sp, r, ids_.data(), d);
      put(R"(,"request":{"method":"PUT","url":")");
      put(type);
      put("/");
      put(id);
      put(R"("}})");
      bundle_.Advance(static_cast<size_t>(d - start));
      ++counts_[r.type];
    }
    RETURN_IF_ERROR(bundle_.Append("]}\n"));
    return bundle_.Close();
  }

  Status WriteGroup(OutFile* f, const std::string& id, const std::string& name, int64_t step) {
    int64_t members = (options_.patients + step - 1) / step;
    std::string head = R"({"resourceType":"Group","id":)" + JsonString(id) +
                       R"(,"active":true,"type":"person","actual":true,"name":)" + JsonString(name) +
                       R"(,"quantity":)" + std::to_string(members) + R"(,"member":[)";
    RETURN_IF_ERROR(f->Append(head));
    char id_text[kIdLen];
    for (int64_t k = 0; k < options_.patients; k += step) {
      const SourcePatient& sp = source_->patients[order_[static_cast<size_t>(k) % order_.size()]];
      FormatId(sp.ids[sp.patient], CloneKey(options_.seed, static_cast<uint64_t>(k)), id_text);
      RETURN_IF_ERROR(
          f->Append(k == 0 ? R"({"entity":{"reference":"Patient/)" : R"(,{"entity":{"reference":"Patient/)"));
      RETURN_IF_ERROR(f->Append(std::string_view(id_text, kIdLen)));
      RETURN_IF_ERROR(f->Append(R"("}})"));
    }
    RETURN_IF_ERROR(f->Append("]}\n"));
    ++counts_[GroupType()];
    return Status::Ok();
  }

  Status WriteGroups() {
    ASSIGN_OR_RETURN(OutFile * f, FileFor(GroupType()));
    std::string seed = std::to_string(options_.seed);
    std::string n = std::to_string(options_.patients);
    RETURN_IF_ERROR(WriteGroup(f, "group-all-" + seed, "All " + n + " generated patients (seed " + seed + ")", 1));
    return WriteGroup(f, "group-1pct-" + seed, "Every 100th of " + n + " generated patients (seed " + seed + ")", 100);
  }

  const GenerateOptions& options_;
  Source* source_;
  std::vector<uint32_t> order_;
  std::vector<std::unique_ptr<OutFile>> files_;  // by type index; the last is Group when no source has one
  std::vector<int64_t> counts_;
  std::vector<char> ids_;
  OutFile bundle_;  // reopened per patient; bytes() counts all of them
};

Result<std::string> DefaultSourceDir() {
  std::vector<fs::path> candidates;
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    fs::path dir = exe.parent_path();
    for (int up = 0; up < 3 && !dir.empty(); ++up, dir = dir.parent_path()) candidates.push_back(dir / kSampleSubdir);
  }
  fs::path cwd = fs::current_path(ec);
  if (!ec) candidates.push_back(cwd / kSampleSubdir);
  candidates.push_back(fs::path(__FILE__).parent_path().parent_path().parent_path() / kSampleSubdir);
  for (const auto& c : candidates) {
    if (fs::is_directory(c, ec)) return c.string();
  }
  return Status::NotFound(
      "no --source given and the Synthea sample is not unpacked in <repo>/data/synthea-r4-100 (run "
      "scripts/sample-data.sh, or pass --source DIR)");
}

Status PrepareOutDir(const std::string& dir) {
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec)) return Status::Invalid(dir + " exists and is not a directory");
    if (!fs::is_empty(dir, ec))
      return Status::Invalid(dir + " is not empty; generate writes into a new or empty folder");
    return Status::Ok();
  }
  fs::create_directories(dir, ec);
  if (ec) return Status::Unavailable("cannot create " + dir + ": " + ec.message());
  return Status::Ok();
}

double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

}  // namespace

int RunGenerate(const GenerateOptions& options) {
  auto start = std::chrono::steady_clock::now();
  if (options.patients < 1) {
    std::fprintf(stderr, "fhirlake generate: --patients must be at least 1\n");
    return 2;
  }
  std::string source_dir = options.source_dir;
  if (source_dir.empty()) {
    auto found = DefaultSourceDir();
    if (!found.ok()) {
      std::fprintf(stderr, "fhirlake generate: %s\n", found.status().message().c_str());
      return 2;
    }
    source_dir = *found;
  }
  Status st = PrepareOutDir(options.out_dir);
  if (!st.ok()) {
    std::fprintf(stderr, "fhirlake generate: %s\n", st.message().c_str());
    return 2;
  }
  Source source;
  st = source.Read(source_dir);
  if (!st.ok()) {
    std::fprintf(stderr, "fhirlake generate: reading the source %s: %s\n", source_dir.c_str(), st.message().c_str());
    return 2;
  }
  double read_s = SecondsSince(start);
  auto write_start = std::chrono::steady_clock::now();
  Generator gen(options, &source);
  st = gen.Run();
  if (!st.ok()) {
    std::fprintf(stderr, "fhirlake generate: stopped: %s\n", st.message().c_str());
    return 2;
  }
  double write_s = SecondsSince(write_start);
  double total_s = SecondsSince(start);
  double mb = static_cast<double>(gen.bytes()) / 1e6;
  std::printf(
      "generated %lld patients (seed %llu) from %zu source patients in %s: %lld resources of %zu types, %llu bytes "
      "into %s in %.2f s (%.0f MB/s; source read in %.2f s, writing %.2f s at %.0f MB/s)\n",
      static_cast<long long>(options.patients), static_cast<unsigned long long>(options.seed), source.patients.size(),
      source_dir.c_str(), static_cast<long long>(gen.resources()), gen.types(),
      static_cast<unsigned long long>(gen.bytes()), options.out_dir.c_str(), total_s, total_s > 0 ? mb / total_s : 0.0,
      read_s, write_s, write_s > 0 ? mb / write_s : 0.0);
  return 0;
}

}  // namespace fhirlake::app
