// batch and transaction Bundles (FHIR R4 §3.1.0.11): a transaction is one store transaction (all or
// nothing) with urn:uuid and conditional-reference resolution; a batch runs each entry on its own.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"
#include "store/resource_store.h"

namespace fhirlake::api {

// Ids of the current resources of `type` matching a conditional criterion "identifier=[system|]value" (the
// form conditional create and conditional references support). `what` names the criterion in errors.
Result<std::vector<std::string>> FindByCondition(store::StoreTransaction& txn, std::string_view type,
                                                 std::string_view criterion, std::string_view what);

// Returns the transaction-response / batch-response Bundle. For a transaction, any failing entry fails the
// whole request (nothing is written) with a Status whose message names the entry.
Result<std::string> ProcessBundle(store::ResourceStore& store, std::string_view body);

}  // namespace fhirlake::api
