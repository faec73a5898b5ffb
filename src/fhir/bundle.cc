// Bundle structure reader: fields of each entry may come in any order; the resource is kept as raw
// bytes (validated later, when ResourceParser parses it).
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

Status ReadEntry(od::object entry, size_t index, BundleEntryView* out) {
  std::string where = "Bundle.entry[" + std::to_string(index) + "]";
  for (auto field : entry) {
    std::string_view key;
    if (auto e = field.unescaped_key().get(key)) return JsonError(e);
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
      for (auto rf : req) {
        std::string_view rkey;
        if (auto e = rf.unescaped_key().get(rkey)) return JsonError(e);
        od::value rv = rf.value();
        if (rkey == "method") {
          RETURN_IF_ERROR(ReadString(rv, where + ".request.method", &out->request_method));
        } else if (rkey == "url") {
          RETURN_IF_ERROR(ReadString(rv, where + ".request.url", &out->request_url));
        } else if (rkey == "ifNoneExist") {
          RETURN_IF_ERROR(ReadString(rv, where + ".request.ifNoneExist", &out->if_none_exist));
        } else if (rkey == "ifMatch") {
          RETURN_IF_ERROR(ReadString(rv, where + ".request.ifMatch", &out->if_match));
        }  // other request members (ifModifiedSince...) are skipped by the iterator
      }
    }
  }
  return Status::Ok();
}

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
  bool is_bundle = false;
  for (auto field : obj) {
    std::string_view key;
    if (auto e = field.unescaped_key().get(key)) return JsonError(e);
    od::value v = field.value();
    if (key == "resourceType") {
      std::string_view s;
      if (v.get_string().get(s)) return Status::Invalid("resourceType must be a JSON string");
      if (s != "Bundle") return Status::Invalid("Expected a Bundle, got resourceType '" + std::string(s) + "'");
      is_bundle = true;
    } else if (key == "type") {
      RETURN_IF_ERROR(ReadString(v, "Bundle.type", &out.type));
    } else if (key == "entry") {
      od::array entries;
      if (v.get_array().get(entries)) return Status::Invalid("Bundle.entry must be a JSON array");
      for (auto element : entries) {
        od::object entry;
        if (element.get_object().get(entry)) {
          return Status::Invalid("Bundle.entry[" + std::to_string(out.entries.size()) + "] must be a JSON object");
        }
        BundleEntryView view;
        RETURN_IF_ERROR(ReadEntry(entry, out.entries.size(), &view));
        out.entries.push_back(std::move(view));
      }
    }
  }
  if (doc.current_location().error() != simdjson::OUT_OF_BOUNDS)
    return Status::Invalid("Invalid JSON: unexpected content after the Bundle");
  if (!is_bundle) return Status::Invalid("The resource has no resourceType 'Bundle'");
  return out;
}

}  // namespace fhirlake::fhir
