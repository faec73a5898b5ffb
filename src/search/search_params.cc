// The hand-written part of the parameter registry (search_params.h); the tables are in search_params_generated.cc.
#include "search/search_params.h"

namespace fhirlake::search {

std::string_view ParamTypeName(ParamType type) {
  switch (type) {
    case ParamType::kString:
      return "string";
    case ParamType::kToken:
      return "token";
    case ParamType::kReference:
      return "reference";
    case ParamType::kDate:
      return "date";
    case ParamType::kNumber:
      return "number";
    case ParamType::kQuantity:
      return "quantity";
    case ParamType::kUri:
      return "uri";
    case ParamType::kComposite:
      return "composite";
  }
  return "unknown";
}

}  // namespace fhirlake::search
