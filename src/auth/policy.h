// IAM-style policy documents and their evaluation, as AWS IAM does it for identity-based policies: default deny, an
// explicit Deny beats any Allow, `*` and `?` wildcards in actions (case-insensitive) and resources, and the
// conditions a HealthLake policy uses: StringEquals / StringNotEquals / StringLike / StringNotLike (also
// ...IgnoreCase for the Equals forms) on any key of the request's context (aws:ResourceTag/<key>,
// aws:PrincipalAccount, aws:SourceIp as text, ...), IpAddress / NotIpAddress (CIDR) on aws:SourceIp, Bool on
// aws:SecureTransport. Pure functions, no I/O.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace fhirlake::auth {

struct Condition {
  std::string op;   // e.g. "StringEquals", "IpAddress"
  std::string key;  // e.g. "aws:ResourceTag/team" (compared case-insensitively, as IAM does for keys)
  std::vector<std::string> values;
  bool if_exists = false;  // the ...IfExists form: a missing key matches
};

struct Statement {
  std::string sid;
  bool allow = true;
  std::vector<std::string> actions;  // Action (or NotAction when not_action)
  bool not_action = false;
  std::vector<std::string> resources;  // Resource (or NotResource when not_resource)
  bool not_resource = false;
  std::vector<Condition> conditions;  // all must hold
};

struct Policy {
  std::vector<Statement> statements;
};

// Parses one policy document ({"Version": "2012-10-17", "Statement": [...] or {...}}). kInvalid names what is wrong
// ("Statement[2].Effect must be Allow or Deny"). An unknown condition operator is an error (never ignored: a
// condition that is not understood must not turn into an unconditional Allow).
Result<Policy> ParsePolicy(std::string_view json);

// What a request asks for: the action ("healthlake:ReadResource"), the resource ARN, and the condition context
// (keys as IAM spells them; looked up case-insensitively).
struct RequestFacts {
  std::string action;
  std::string resource;
  std::map<std::string, std::string> context;
};

enum class Decision { kAllow, kExplicitDeny, kImplicitDeny };
std::string_view DecisionName(Decision d);

// IAM's evaluation over every statement of every policy.
Decision Evaluate(const std::vector<Policy>& policies, const RequestFacts& facts);

// IAM wildcard match: '*' any run of characters, '?' one character.
bool WildcardMatch(std::string_view pattern, std::string_view text, bool ignore_case);

}  // namespace fhirlake::auth
