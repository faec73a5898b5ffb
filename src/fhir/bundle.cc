// Bundle structure reader: fields of each entry may come in any order; the resource is kept as raw bytes
// (validated later, when ResourceParser parses it). Every other member is read in full, so that malformed JSON,
// duplicate keys or excessive nesting anywhere in the Bundle is rejected even where the server uses nothing.
#include "fhir/bundle.h"

#include "fhir/json_values.h"

namespace fhirlake::fhir {
namespace {

namespace od = simdjson::ondemand;

Status ReadString(od::value v, std::string_view what, std::string* out) {
  std::string_view s;
  if (v.get_string().get(s)) return Status::Invalid(std::string(what) + " must be a JSON string");
  out->assign(s);
  return Status::Ok();
}

// Reads the Bundle's own objects; `keys_` is the duplicate-key stack shared by nested objects.
class BundleReader {
 public:
  Status ReadEntry(od::object entry, size_t index, BundleEntryView* out) {
    std::string where = "Bundle.entry[" + std::to_string(index) + "]";
    ObjectKeys keys(&keys_);
    for (auto field : entry) {
      std::string_view key;
      if (auto e = field.unescaped_key().get(key)) return JsonError(e);
      if (!keys.Insert(key)) return DuplicateKeyError(key, where);
      od::value v = field.value();
      if (key == "fullUrl") {
        RETURN_IF_ERROR(ReadString(v, where + ".fullUrl", &out->full_url));
      } else if (key == "resource") {
        od::object res;
        if (v.get_object().get(res)) return Status::Invalid(where + ".resource must be a JSON object");
        std::string_view raw;
        if (auto e = res.raw_json().get(raw)) return JsonError(e);
        out->resource_json = raw;
      } else if (key == "request") {
        od::object req;
        if (v.get_object().get(req)) return Status::Invalid(where + ".request must be a JSON object");
        out->has_request = true;
        RETURN_IF_ERROR(ReadRequest(req, where + ".request", out));
      } else {
        // entry.search, entry.response, entry.link, extensions, ...: level 3 (Bundle, entry array, entry).
        std::string path = where + "." + std::string(key);
        RETURN_IF_ERROR(ValidateJsonValue(v, 3, &path, &keys_));
      }
    }
    return Status::Ok();
  }

  Status ReadRequest(od::object req, const std::string& where, BundleEntryView* out) {
    ObjectKeys keys(&keys_);
    for (auto rf : req) {
      std::string_view rkey;
      if (auto e = rf.unescaped_key().get(rkey)) return JsonError(e);
      if (!keys.Insert(rkey)) return DuplicateKeyError(rkey, where);
      od::value rv = rf.value();
      if (rkey == "method") {
        RETURN_IF_ERROR(ReadString(rv, where + ".method", &out->request_method));
      } else if (rkey == "url") {
        RETURN_IF_ERROR(ReadString(rv, where + ".url", &out->request_url));
      } else if (rkey == "ifNoneExist") {
        RETURN_IF_ERROR(ReadString(rv, where + ".ifNoneExist", &out->if_none_exist));
      } else if (rkey == "ifMatch") {
        RETURN_IF_ERROR(ReadString(rv, where + ".ifMatch", &out->if_match));
      } else {
        // ifModifiedSince, ifNoneMatch, extensions: not used, validated (level 4).
        std::string path = where + "." + std::string(rkey);
        RETURN_IF_ERROR(ValidateJsonValue(rv, 4, &path, &keys_));
      }
    }
    return Status::Ok();
  }

  Status ReadBundle(od::object obj, BundleView* out) {
    bool is_bundle = false;
    ObjectKeys keys(&keys_);
    for (auto field : obj) {
      std::string_view key;
      if (auto e = field.unescaped_key().get(key)) return JsonError(e);
      if (!keys.Insert(key)) return DuplicateKeyError(key, "Bundle");
      od::value v = field.value();
      if (key == "resourceType") {
        std::string_view s;
        if (v.get_string().get(s)) return Status::Invalid("resourceType must be a JSON string");
        if (s != "Bundle") return Status::Invalid("Expected a Bundle, got resourceType '" + std::string(s) + "'");
        is_bundle = true;
      } else if (key == "type") {
        RETURN_IF_ERROR(ReadString(v, "Bundle.type", &out->type));
      } else if (key == "entry") {
        od::array entries;
        if (v.get_array().get(entries)) return Status::Invalid("Bundle.entry must be a JSON array");
        for (auto element : entries) {
          od::object entry;
          if (element.get_object().get(entry)) {
            return Status::Invalid("Bundle.entry[" + std::to_string(out->entries.size()) + "] must be a JSON object");
          }
          BundleEntryView view;
          RETURN_IF_ERROR(ReadEntry(entry, out->entries.size(), &view));
          out->entries.push_back(std::move(view));
        }
      } else {
        // id, meta, identifier, timestamp, total, link, signature, ...
        std::string path = "Bundle." + std::string(key);
        RETURN_IF_ERROR(ValidateJsonValue(v, 1, &path, &keys_));
      }
    }
    if (!is_bundle) return Status::Invalid("The resource has no resourceType 'Bundle'");
    return Status::Ok();
  }

 private:
  std::vector<std::string_view> keys_;
};

}  // namespace

Result<BundleView> ParseBundle(ResourceParser& parser, std::string_view json, const char* allocation_end) {
  auto& p = parser.simdjson_parser();
  size_t capacity = static_cast<size_t>(allocation_end - json.data());
  if (capacity < json.size() + simdjson::SIMDJSON_PADDING) {
    return Status::Internal("ParseBundle needs a padded buffer");
  }
  od::document doc;
  if (auto e = p.iterate(json.data(), json.size(), capacity).get(doc)) return JsonError(e);
  od::object obj;
  if (doc.get_object().get(obj)) return Status::Invalid("The body is not a JSON object");
  BundleView out;
  BundleReader reader;
  RETURN_IF_ERROR(reader.ReadBundle(obj, &out));
  if (doc.current_location().error() != simdjson::OUT_OF_BOUNDS)
    return Status::Invalid("Invalid JSON: unexpected content after the Bundle");
  return out;
}

}  // namespace fhirlake::fhir
