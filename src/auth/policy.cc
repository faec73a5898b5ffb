#include "auth/policy.h"

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstring>
#include <nlohmann/json.hpp>

namespace fhirlake::auth {
namespace {

using nlohmann::json;

char Lower(char c) { return static_cast<char>(std::tolower(static_cast<unsigned char>(c))); }

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  return a.size() == b.size() &&
         std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) { return Lower(x) == Lower(y); });
}

// A string or an array of strings (IAM accepts both for Action, Resource and condition values).
Result<std::vector<std::string>> StringList(const json& v, const std::string& where) {
  std::vector<std::string> out;
  if (v.is_string()) {
    out.push_back(v.get<std::string>());
    return out;
  }
  if (!v.is_array() || v.empty()) return Status::Invalid(where + " must be a string or a non-empty array of strings");
  for (const auto& e : v) {
    if (e.is_string()) {
      out.push_back(e.get<std::string>());
    } else if (e.is_boolean() || e.is_number()) {
      out.push_back(e.dump());  // {"Bool": {"aws:SecureTransport": true}}
    } else {
      return Status::Invalid(where + " must hold strings");
    }
  }
  return out;
}

constexpr std::string_view kOperators[] = {"StringEquals",
                                           "StringNotEquals",
                                           "StringEqualsIgnoreCase",
                                           "StringNotEqualsIgnoreCase",
                                           "StringLike",
                                           "StringNotLike",
                                           "IpAddress",
                                           "NotIpAddress",
                                           "Bool",
                                           "Null"};

struct Cidr {
  int family = 0;
  std::array<unsigned char, 16> addr{};
  int bits = 0;
};

std::optional<Cidr> ParseCidr(std::string_view text) {
  std::string s(text);
  Cidr c;
  size_t slash = s.find('/');
  std::string host = s.substr(0, slash);
  if (inet_pton(AF_INET, host.c_str(), c.addr.data()) == 1) {
    c.family = AF_INET;
    c.bits = 32;
  } else if (inet_pton(AF_INET6, host.c_str(), c.addr.data()) == 1) {
    c.family = AF_INET6;
    c.bits = 128;
  } else {
    return std::nullopt;
  }
  if (slash != std::string::npos) {
    std::string b = s.substr(slash + 1);
    if (b.empty() || b.size() > 3 || !std::all_of(b.begin(), b.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
      return std::nullopt;
    }
    int bits = std::stoi(b);
    if (bits > c.bits) return std::nullopt;
    c.bits = bits;
  }
  return c;
}

bool InCidr(const Cidr& net, const Cidr& ip) {
  if (net.family != ip.family) return false;
  int bits = net.bits;
  for (size_t i = 0; bits > 0; ++i, bits -= 8) {
    const unsigned mask = bits >= 8 ? 0xFFu : (0xFFu << (8 - bits)) & 0xFFu;
    if ((net.addr[i] & mask) != (ip.addr[i] & mask)) return false;
  }
  return true;
}

const std::string* Lookup(const std::map<std::string, std::string>& context, std::string_view key) {
  for (const auto& [k, v] : context) {
    if (EqualsIgnoreCase(k, key)) return &v;
  }
  return nullptr;
}

bool ConditionHolds(const Condition& c, const RequestFacts& facts) {
  const std::string* value = Lookup(facts.context, c.key);
  if (c.op == "Null") {
    // "true": the key must be absent; "false": present.
    const bool want_absent = !c.values.empty() && c.values[0] == "true";
    return want_absent == (value == nullptr);
  }
  if (value == nullptr) {
    // A missing key: the negated operators hold (as IAM evaluates them), the others do not, unless ...IfExists.
    if (c.if_exists) return true;
    return c.op == "StringNotEquals" || c.op == "StringNotEqualsIgnoreCase" || c.op == "StringNotLike" ||
           c.op == "NotIpAddress";
  }
  auto any = [&](auto pred) { return std::any_of(c.values.begin(), c.values.end(), pred); };
  if (c.op == "StringEquals") return any([&](const std::string& v) { return v == *value; });
  if (c.op == "StringNotEquals") return !any([&](const std::string& v) { return v == *value; });
  if (c.op == "StringEqualsIgnoreCase") return any([&](const std::string& v) { return EqualsIgnoreCase(v, *value); });
  if (c.op == "StringNotEqualsIgnoreCase") {
    return !any([&](const std::string& v) { return EqualsIgnoreCase(v, *value); });
  }
  if (c.op == "StringLike") return any([&](const std::string& v) { return WildcardMatch(v, *value, false); });
  if (c.op == "StringNotLike") return !any([&](const std::string& v) { return WildcardMatch(v, *value, false); });
  if (c.op == "Bool") return any([&](const std::string& v) { return EqualsIgnoreCase(v, *value); });
  if (c.op == "IpAddress" || c.op == "NotIpAddress") {
    auto ip = ParseCidr(*value);
    const bool in = ip && any([&](const std::string& v) {
                      auto net = ParseCidr(v);
                      return net && InCidr(*net, *ip);
                    });
    return c.op == "IpAddress" ? in : !in;
  }
  return false;  // unreachable: ParsePolicy accepts only the operators above
}

bool StatementMatches(const Statement& s, const RequestFacts& facts) {
  const bool action_listed = std::any_of(s.actions.begin(), s.actions.end(),
                                         [&](const std::string& a) { return WildcardMatch(a, facts.action, true); });
  if (action_listed == s.not_action) return false;
  const bool resource_listed = std::any_of(s.resources.begin(), s.resources.end(), [&](const std::string& r) {
    return WildcardMatch(r, facts.resource, false);
  });
  if (resource_listed == s.not_resource) return false;
  return std::all_of(s.conditions.begin(), s.conditions.end(),
                     [&](const Condition& c) { return ConditionHolds(c, facts); });
}

}  // namespace

bool WildcardMatch(std::string_view pattern, std::string_view text, bool ignore_case) {
  // Iterative glob with backtracking to the last '*'.
  size_t p = 0, t = 0, star = std::string_view::npos, mark = 0;
  auto same = [&](char a, char b) { return ignore_case ? Lower(a) == Lower(b) : a == b; };
  while (t < text.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || (pattern[p] != '*' && same(pattern[p], text[t])))) {
      ++p;
      ++t;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = t;
    } else if (star != std::string_view::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

std::string_view DecisionName(Decision d) {
  switch (d) {
    case Decision::kAllow:
      return "allow";
    case Decision::kExplicitDeny:
      return "explicit deny";
    case Decision::kImplicitDeny:
      return "implicit deny";
  }
  return "?";
}

Result<Policy> ParsePolicy(std::string_view text) {
  json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) return Status::Invalid("a policy document must be a JSON object");
  for (auto it = doc.begin(); it != doc.end(); ++it) {
    if (it.key() != "Version" && it.key() != "Statement" && it.key() != "Id") {
      return Status::Invalid("policy: unknown member '" + it.key() + "' (expected Version, Id, Statement)");
    }
  }
  if (auto v = doc.find("Version"); v != doc.end() && (!v->is_string() || (*v != "2012-10-17" && *v != "2008-10-17"))) {
    return Status::Invalid("policy: Version must be \"2012-10-17\"");
  }
  auto st = doc.find("Statement");
  if (st == doc.end()) return Status::Invalid("policy: Statement is required");
  std::vector<json> statements;
  if (st->is_object()) {
    statements.push_back(*st);
  } else if (st->is_array()) {
    statements.assign(st->begin(), st->end());
  } else {
    return Status::Invalid("policy: Statement must be an object or an array");
  }
  Policy out;
  for (size_t i = 0; i < statements.size(); ++i) {
    const json& s = statements[i];
    const std::string where = "Statement[" + std::to_string(i) + "]";
    if (!s.is_object()) return Status::Invalid(where + " must be an object");
    Statement stmt;
    for (auto it = s.begin(); it != s.end(); ++it) {
      const std::string& k = it.key();
      if (k != "Sid" && k != "Effect" && k != "Action" && k != "NotAction" && k != "Resource" && k != "NotResource" &&
          k != "Condition") {
        return Status::Invalid(where + ": '" + k +
                               "' is not supported (Principal and NotPrincipal belong to resource policies)");
      }
    }
    if (auto sid = s.find("Sid"); sid != s.end()) {
      if (!sid->is_string()) return Status::Invalid(where + ".Sid must be a string");
      stmt.sid = sid->get<std::string>();
    }
    auto effect = s.find("Effect");
    if (effect == s.end() || !effect->is_string() || (*effect != "Allow" && *effect != "Deny")) {
      return Status::Invalid(where + ".Effect must be Allow or Deny");
    }
    stmt.allow = *effect == "Allow";
    const bool has_action = s.contains("Action"), has_not_action = s.contains("NotAction");
    if (has_action == has_not_action) return Status::Invalid(where + " needs exactly one of Action and NotAction");
    stmt.not_action = has_not_action;
    ASSIGN_OR_RETURN(stmt.actions, StringList(s[has_action ? "Action" : "NotAction"],
                                              where + (has_action ? ".Action" : ".NotAction")));
    const bool has_resource = s.contains("Resource"), has_not_resource = s.contains("NotResource");
    if (has_resource == has_not_resource) {
      return Status::Invalid(where + " needs exactly one of Resource and NotResource");
    }
    stmt.not_resource = has_not_resource;
    ASSIGN_OR_RETURN(stmt.resources, StringList(s[has_resource ? "Resource" : "NotResource"],
                                                where + (has_resource ? ".Resource" : ".NotResource")));
    if (auto cond = s.find("Condition"); cond != s.end()) {
      if (!cond->is_object()) return Status::Invalid(where + ".Condition must be an object");
      for (auto op = cond->begin(); op != cond->end(); ++op) {
        std::string name = op.key();
        bool if_exists = false;
        if (name.size() > 8 && name.ends_with("IfExists")) {
          if_exists = true;
          name.resize(name.size() - 8);
        }
        if (std::find(std::begin(kOperators), std::end(kOperators), name) == std::end(kOperators)) {
          return Status::Invalid(where + ".Condition: operator '" + op.key() + "' is not supported");
        }
        if (!op->is_object()) return Status::Invalid(where + ".Condition." + op.key() + " must be an object");
        for (auto kv = op->begin(); kv != op->end(); ++kv) {
          Condition c;
          c.op = name;
          c.key = kv.key();
          c.if_exists = if_exists;
          ASSIGN_OR_RETURN(c.values, StringList(*kv, where + ".Condition." + op.key() + "." + kv.key()));
          if (name == "IpAddress" || name == "NotIpAddress") {
            for (const auto& v : c.values) {
              if (!ParseCidr(v)) {
                return Status::Invalid(where + ".Condition." + op.key() + ": '" + v + "' is not an IP address or CIDR");
              }
            }
          }
          stmt.conditions.push_back(std::move(c));
        }
      }
    }
    out.statements.push_back(std::move(stmt));
  }
  return out;
}

Decision Evaluate(const std::vector<Policy>& policies, const RequestFacts& facts) {
  bool allowed = false;
  for (const Policy& p : policies) {
    for (const Statement& s : p.statements) {
      if (!StatementMatches(s, facts)) continue;
      if (!s.allow) return Decision::kExplicitDeny;
      allowed = true;
    }
  }
  return allowed ? Decision::kAllow : Decision::kImplicitDeny;
}

}  // namespace fhirlake::auth
