// Tests for SMART scopes, JWKS parsing and base64url (src/auth/smart.h); the token flow itself runs end to end in
// tests/e2e/test_smart.py with keys made by openssl.
#include "auth/smart.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <fstream>
#include <string>
#include <vector>

#include "test_util.h"

namespace fhirlake::auth {
namespace {

TEST(ScopeTest, V1AndV2Forms) {
  ASSERT_OK_AND_ASSIGN(Scope v1, ParseScope("system/Observation.read"));
  EXPECT_EQ(v1.context, "system");
  EXPECT_EQ(v1.type, "Observation");
  EXPECT_TRUE(v1.r && v1.s && !v1.c && !v1.u && !v1.d);
  ASSERT_OK_AND_ASSIGN(Scope w, ParseScope("system/*.write"));
  EXPECT_TRUE(w.c && w.u && w.d && !w.r && !w.s);
  ASSERT_OK_AND_ASSIGN(Scope v2, ParseScope("system/Patient.rs"));
  EXPECT_TRUE(v2.r && v2.s && !v2.c);
  ASSERT_OK_AND_ASSIGN(Scope all, ParseScope("system/*.cruds"));
  EXPECT_TRUE(all.c && all.r && all.u && all.d && all.s);
  ASSERT_OK_AND_ASSIGN(Scope filtered, ParseScope("system/Observation.rs?category=laboratory"));  // v2.2: ignored
  EXPECT_EQ(filtered.type, "Observation");
  ASSERT_OK_AND_ASSIGN(Scope patient, ParseScope("patient/*.read"));
  EXPECT_EQ(patient.context, "patient");
  for (const char* bad : {"system/Observation", "Observation.read", "admin/*.read", "system/Nonsense.read",
                          "system/*.rc", "system/*.rr", "system/*.x", "system/*."}) {
    EXPECT_STATUS(ParseScope(bad), kInvalid, "scope") << bad;
  }
}

TEST(ScopeTest, OnlySystemScopesGrant) {
  std::vector<Scope> scopes;
  for (const char* s : {"system/Patient.rs", "patient/*.read", "user/Observation.cruds"}) {
    auto parsed = ParseScope(s);
    ASSERT_OK(parsed);
    scopes.push_back(*parsed);
  }
  EXPECT_TRUE(SystemScopeAllows(scopes, "Patient", 'r'));
  EXPECT_TRUE(SystemScopeAllows(scopes, "Patient", 's'));
  EXPECT_FALSE(SystemScopeAllows(scopes, "Patient", 'u'));
  EXPECT_FALSE(SystemScopeAllows(scopes, "Observation", 'r'));  // user/ and patient/ do not count
  EXPECT_FALSE(SystemScopeAllows(scopes, "*", 'r'));
}

TEST(Base64UrlTest, RoundTripAndRejects) {
  const std::vector<std::string> samples = {"",     "f",     "fo",     "foo",
                                            "foob", "fooba", "foobar", std::string("\xff\xfe\x00\x01", 4)};
  for (const std::string& s : samples) {
    auto back = Base64UrlDecode(Base64UrlEncode(s));
    ASSERT_TRUE(back.has_value()) << s;
    EXPECT_EQ(*back, s);
  }
  EXPECT_EQ(Base64UrlEncode("\xfb\xff"), "-_8");
  EXPECT_FALSE(Base64UrlDecode("a").has_value());
  EXPECT_FALSE(Base64UrlDecode("ab+/").has_value());  // the standard alphabet is not base64url
  EXPECT_FALSE(Base64UrlDecode("ab=").has_value());
  EXPECT_FALSE(Base64UrlDecode("Zh").has_value());  // non-canonical trailing bits
}

TEST(JwksTest, RefusesWhatCannotVerifyAnAssertion) {
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"[]", "keys"},
      {R"({"keys": [{"kty": "oct", "k": "c2VjcmV0"}]})", "kty"},
      {R"({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "d": "AQAB"}]})", "private"},
      {R"({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]})", "2048"},
      {R"({"keys": [{"kty": "RSA", "e": "AQAB"}]})", "n and e"},
      {R"({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB", "alg": "RS256"}]})", "RS384"},
      {R"({"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]})", "P-384"},
      {R"({"keys": [{"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}]})", "P-384 public key"},
      // e = 1 makes any padded hash a valid "signature": refused however large n is.
      {std::string(R"({"keys": [{"kty": "RSA", "e": "AQ", "n": ")") + std::string(342, '_') + "8\"}]}", "exponent"},
  };
  for (const auto& [doc, mention] : bad) {
    EXPECT_STATUS(ParseJwks(doc, ClientAlgorithms()), kInvalid, mention) << doc;
  }
  ASSERT_OK_AND_ASSIGN(auto none, ParseJwks(R"({"keys": []})", ClientAlgorithms()));
  EXPECT_TRUE(none.empty());
}

// RFC 7515 A.3's P-256 public key: an issuer accepting ES256 may use it, a SMART client (RS384/ES384) may not.
constexpr char kP256[] = R"({"keys": [{"kty": "EC", "crv": "P-256", "kid": "a3",
    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]})";

TEST(JwksTest, AnIssuersAlgorithmsDecideWhichKeysCount) {
  ASSERT_OK_AND_ASSIGN(auto keys, ParseJwks(kP256, {"ES256"}));
  ASSERT_EQ(keys.size(), 1u);
  EXPECT_EQ(keys[0].alg, "ES256");
  EXPECT_TRUE(keys[0].Fits("ES256"));
  EXPECT_FALSE(keys[0].Fits("ES384"));
  EXPECT_FALSE(keys[0].Fits("RS256"));
  EXPECT_STATUS(ParseJwks(kP256, ClientAlgorithms()), kInvalid, "P-384");
  EXPECT_STATUS(ParseJwks(kP256, {"RS256"}), kInvalid, "curve 'P-256'");
  // The curve fixes the algorithm: an EC key claiming another is refused.
  std::string lying = kP256;
  lying.insert(lying.find("\"kid\""), "\"alg\": \"ES384\", ");
  EXPECT_STATUS(ParseJwks(lying, IssuerAlgorithms()), kInvalid, "verifies ES256, not ES384");

  auto set = KeySet::Inline(std::move(keys));
  EXPECT_EQ(set->KeysFor("a3", "ES256", 0).size(), 1u);
  EXPECT_EQ(set->KeysFor("", "ES256", 0).size(), 1u);
  EXPECT_TRUE(set->KeysFor("other", "ES256", 0).empty());
  EXPECT_TRUE(set->KeysFor("a3", "RS256", 0).empty());
  EXPECT_OK(set->Fetch());  // an inline set has nothing to fetch
}

TEST(JwksTest, APublishedSetLeavesOutKeysItCannotUseButNeverAPrivateOne) {
  // Keycloak's certs endpoint: an RSA-OAEP encryption key beside the signature key; here also an Ed25519 key and an
  // EC key whose key_ops do not include verify.
  const std::string doc =
      R"({"keys": [{"kty": "RSA", "use": "enc", "alg": "RSA-OAEP", "n": "AQAB", "e": "AQAB"},
                   {"kty": "OKP", "crv": "Ed25519", "x": "AAAA"},
                   {"kty": "EC", "crv": "P-256", "kid": "ops", "key_ops": ["encrypt"], "x": "AA", "y": "AA"},
                   {"kty": "EC", "crv": "P-256", "kid": "a3", "use": "sig",
                    "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                    "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]})";
  std::vector<std::string> skipped;
  ASSERT_OK_AND_ASSIGN(auto keys, ParseJwks(doc, {"ES256", "RS256"}, true, &skipped));
  ASSERT_EQ(keys.size(), 1u);
  EXPECT_EQ(keys[0].kid, "a3");
  EXPECT_EQ(skipped.size(), 3u);
  // Given inline, the same set is an error naming the key (an operator wants to know).
  EXPECT_STATUS(ParseJwks(doc, {"ES256", "RS256"}), kInvalid, "keys[0]");
  // A private key refuses the whole set, skipping or not.
  EXPECT_STATUS(ParseJwks(R"({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "AA", "d": "AA"}]})", {"ES256"}, true),
                kInvalid, "private key");
  std::string many = R"({"keys": [)";
  for (size_t i = 0; i <= kMaxJwksKeys; ++i) many += std::string(i ? "," : "") + R"({"kty": "oct"})";
  EXPECT_STATUS(ParseJwks(many + "]}", {"ES256"}, true), kInvalid, "at most 64 keys");
}

TEST(JwksTest, AJwksUrlIsHttpsOrLoopback) {
  for (const char* ok : {"https://idp.example/.well-known/jwks.json", "http://127.0.0.1:9999/jwks.json",
                         "http://localhost/jwks", "http://[::1]:8/k"}) {
    EXPECT_TRUE(CheckJwksUrl(ok).ok()) << ok;
  }
  for (const char* bad : {"http://idp.example/jwks", "http://10.0.0.1/jwks", "ftp://127.0.0.1/jwks", "jwks.json",
                          "file:///etc/passwd", "http://127.example.org/jwks"}) {
    EXPECT_STATUS(CheckJwksUrl(bad), kInvalid, "") << bad;
  }
}

TEST(JwksTest, AnUnreachableUrlIsAnErrorThatNamesIt) {
  // Port 1 on loopback: nothing listens there.
  auto set = KeySet::FromUrl("http://127.0.0.1:1/jwks.json", IssuerAlgorithms());
  Status st = set->Fetch();
  EXPECT_EQ(st.code(), StatusCode::kUnavailable) << st.ToString();
  EXPECT_NE(st.message().find("http://127.0.0.1:1/jwks.json"), std::string::npos) << st.ToString();
  EXPECT_TRUE(set->KeysFor("", "RS256", 0).empty());
}

TEST(ReplayGuardTest, IdsSurviveAReopenUntilTheyExpire) {
  testutil::TempDir tmp;
  const std::string path = tmp.str() + "/assertion-ids";
  {
    ASSERT_OK_AND_ASSIGN(auto guard, ReplayGuard::Open(path, 1000));
    EXPECT_OK(guard->Record("c|one", 5000, 1000));
    EXPECT_OK(guard->Record("c|two", 2000, 1000));
    EXPECT_STATUS(guard->Record("c|one", 5000, 1500), kConflict, "used already");
  }
  // A torn last line (a crash in the middle of an append) is skipped.
  std::ofstream(path, std::ios::app) << "9999 torn-without-newline";
  ASSERT_OK_AND_ASSIGN(auto reopened, ReplayGuard::Open(path, 3000));
  EXPECT_STATUS(reopened->Record("c|one", 5000, 3000), kConflict, "used already");
  EXPECT_OK(reopened->Record("c|two", 6000, 3000));  // it expired at 2000: forgotten
  EXPECT_OK(reopened->Record("c|one", 9000, 5001));  // and this one at 5000
  ASSERT_OK_AND_ASSIGN(auto memory, ReplayGuard::Open("", 0));
  EXPECT_OK(memory->Record("x", 10, 0));
  EXPECT_STATUS(memory->Record("x", 10, 5), kConflict, "");
}

TEST(ReplayGuardTest, AnUnwritableFileIsAnError) {
  EXPECT_STATUS(ReplayGuard::Open("/nonexistent-dir/assertion-ids", 0), kUnavailable, "auth/");
}

}  // namespace
}  // namespace fhirlake::auth
