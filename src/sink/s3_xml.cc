// S3 reply parsing on libexpat: the body becomes a small element tree (local names, text, children), and each
// reply shape reads the fields it needs from that tree. Expat decodes entities and character references and
// rejects what is not well-formed XML; this file adds the refusal of DTDs and a bound on nesting depth, so that
// no reply, however broken or hostile, can make the tree walk recurse deeply or the parser expand entities.
#include "sink/s3_xml.h"

#include <expat.h>

#include <charconv>
#include <climits>
#include <memory>

namespace fhirlake::sink::s3xml {
namespace {

// S3 replies nest four levels at most; anything far deeper is not an S3 reply.
constexpr int kMaxDepth = 32;
// Expat hands element names over as "namespace-URI<sep>local-name"; a space can be in neither a URI reference
// nor an XML name, so everything after the last one is the local name.
constexpr char kNamespaceSeparator = ' ';

struct Element {
  std::string name;  // local name, without namespace or prefix
  std::string text;  // character data directly inside the element, entities decoded
  std::vector<Element> children;

  const Element* Child(std::string_view child_name) const {
    for (const auto& c : children) {
      if (c.name == child_name) return &c;
    }
    return nullptr;
  }
  std::string ChildText(std::string_view child_name) const {
    const Element* c = Child(child_name);
    return c == nullptr ? std::string() : c->text;
  }
};

struct TreeBuilder {
  XML_Parser parser = nullptr;
  Element root;
  bool has_root = false;
  // The open elements, outermost first. Only the innermost one gains children, so the pointers to its
  // ancestors (each inside its own parent's vector, which does not change meanwhile) stay valid.
  std::vector<Element*> open;
  std::string refusal;  // why parsing was stopped by us, not by expat
};

std::string_view LocalName(const XML_Char* name) {
  std::string_view n(name);
  size_t sep = n.rfind(kNamespaceSeparator);
  return sep == std::string_view::npos ? n : n.substr(sep + 1);
}

void Refuse(TreeBuilder* b, std::string why) {
  if (b->refusal.empty()) b->refusal = std::move(why);
  XML_StopParser(b->parser, XML_FALSE);
}

void XMLCALL OnStart(void* user, const XML_Char* name, const XML_Char** /*attributes*/) {
  auto* b = static_cast<TreeBuilder*>(user);
  if (b->open.size() >= static_cast<size_t>(kMaxDepth)) return Refuse(b, "elements nested too deeply");
  Element* e;
  if (b->open.empty()) {
    b->has_root = true;
    e = &b->root;
  } else {
    e = &b->open.back()->children.emplace_back();
  }
  e->name = std::string(LocalName(name));
  b->open.push_back(e);
}

void XMLCALL OnEnd(void* user, const XML_Char* /*name*/) {
  auto* b = static_cast<TreeBuilder*>(user);
  if (!b->open.empty()) b->open.pop_back();
}

void XMLCALL OnText(void* user, const XML_Char* s, int len) {
  auto* b = static_cast<TreeBuilder*>(user);
  if (!b->open.empty()) b->open.back()->text.append(s, static_cast<size_t>(len));
}

void XMLCALL OnDoctype(void* user, const XML_Char*, const XML_Char*, const XML_Char*, int) {
  Refuse(static_cast<TreeBuilder*>(user), "a DOCTYPE, which S3 never sends");
}

using ParserPtr = std::unique_ptr<std::remove_pointer_t<XML_Parser>, decltype(&XML_ParserFree)>;

// Parses `xml` into a tree whose root element must be named `root_name`; `what` names the reply in messages.
Result<Element> ParseTree(std::string_view xml, std::string_view what, std::string_view root_name) {
  const std::string reply = "S3 " + std::string(what) + " reply";
  if (xml.size() > static_cast<size_t>(INT_MAX)) return Status::Unavailable(reply + " is too large to parse");
  ParserPtr parser(XML_ParserCreateNS("UTF-8", kNamespaceSeparator), &XML_ParserFree);
  if (parser == nullptr) return Status::Internal("cannot create an XML parser");
  TreeBuilder b;
  b.parser = parser.get();
  XML_SetUserData(parser.get(), &b);
  XML_SetElementHandler(parser.get(), OnStart, OnEnd);
  XML_SetCharacterDataHandler(parser.get(), OnText);
  XML_SetStartDoctypeDeclHandler(parser.get(), OnDoctype);
  if (XML_Parse(parser.get(), xml.data(), static_cast<int>(xml.size()), XML_TRUE) != XML_STATUS_OK) {
    if (!b.refusal.empty()) return Status::Unavailable(reply + " refused: it contains " + b.refusal);
    if (xml.empty()) return Status::Unavailable(reply + " is empty where an XML document was expected");
    return Status::Unavailable(reply + " is not well-formed XML (" + XML_ErrorString(XML_GetErrorCode(parser.get())) +
                               " at line " + std::to_string(XML_GetCurrentLineNumber(parser.get())) + ", column " +
                               std::to_string(XML_GetCurrentColumnNumber(parser.get())) + ")");
  }
  if (!b.has_root) return Status::Unavailable(reply + " has no root element");
  if (b.root.name != root_name) {
    if (b.root.name == "Error") {
      std::string out = reply + " is an error: " + b.root.ChildText("Code");
      std::string message = b.root.ChildText("Message");
      if (!message.empty()) out += ": " + message;
      return Status::Unavailable(out);
    }
    return Status::Unavailable(reply + " has root element <" + b.root.name + ">, expected <" + std::string(root_name) +
                               ">");
  }
  return std::move(b.root);
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r' || s.front() == '\n')) {
    s.remove_prefix(1);
  }
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n')) {
    s.remove_suffix(1);
  }
  return s;
}

Result<bool> ParseBool(const Element& parent, std::string_view field, std::string_view what) {
  const Element* e = parent.Child(field);
  if (e == nullptr) return false;
  std::string_view v = Trim(e->text);
  if (v == "true") return true;
  if (v == "false") return false;
  return Status::Unavailable("S3 " + std::string(what) + " reply: " + std::string(field) + " is '" + std::string(v) +
                             "', expected true or false");
}

Result<int64_t> ParseSize(const Element& parent, std::string_view what) {
  const std::string text = parent.ChildText("Size");  // Trim's view must not outlive the text it points into
  std::string_view v = Trim(text);
  int64_t out = 0;
  auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
  if (v.empty() || ec != std::errc() || end != v.data() + v.size() || out < 0) {
    return Status::Unavailable("S3 " + std::string(what) + " reply: Size '" + std::string(v) + "' of key '" +
                               parent.ChildText("Key") + "' is not a byte count");
  }
  return out;
}

}  // namespace

Result<ErrorReply> ParseError(std::string_view xml) {
  ASSIGN_OR_RETURN(Element root, ParseTree(xml, "error", "Error"));
  return ErrorReply{root.ChildText("Code"), root.ChildText("Message")};
}

Result<std::string> ParseInitiateMultipartUpload(std::string_view xml) {
  constexpr std::string_view kWhat = "CreateMultipartUpload";
  ASSIGN_OR_RETURN(Element root, ParseTree(xml, kWhat, "InitiateMultipartUploadResult"));
  std::string id = root.ChildText("UploadId");
  if (id.empty()) return Status::Unavailable("S3 CreateMultipartUpload reply has no UploadId");
  return id;
}

Result<ObjectListing> ParseListObjects(std::string_view xml) {
  constexpr std::string_view kWhat = "ListObjects";
  ASSIGN_OR_RETURN(Element root, ParseTree(xml, kWhat, "ListBucketResult"));
  ObjectListing out;
  for (const auto& c : root.children) {
    if (c.name != "Contents") continue;
    ListedObject o;
    o.key = c.ChildText("Key");
    if (o.key.empty()) return Status::Unavailable("S3 ListObjects reply has a Contents entry without a Key");
    ASSIGN_OR_RETURN(o.size, ParseSize(c, kWhat));
    o.etag = c.ChildText("ETag");
    out.objects.push_back(std::move(o));
  }
  ASSIGN_OR_RETURN(out.is_truncated, ParseBool(root, "IsTruncated", kWhat));
  out.next_continuation_token = root.ChildText("NextContinuationToken");
  out.next_marker = root.ChildText("NextMarker");
  return out;
}

Result<UploadListing> ParseListMultipartUploads(std::string_view xml) {
  constexpr std::string_view kWhat = "ListMultipartUploads";
  ASSIGN_OR_RETURN(Element root, ParseTree(xml, kWhat, "ListMultipartUploadsResult"));
  UploadListing out;
  for (const auto& c : root.children) {
    if (c.name != "Upload") continue;
    ListedUpload u{c.ChildText("Key"), c.ChildText("UploadId")};
    if (u.key.empty() || u.upload_id.empty()) {
      return Status::Unavailable("S3 ListMultipartUploads reply has an Upload without a Key or an UploadId");
    }
    out.uploads.push_back(std::move(u));
  }
  ASSIGN_OR_RETURN(out.is_truncated, ParseBool(root, "IsTruncated", kWhat));
  out.next_key_marker = root.ChildText("NextKeyMarker");
  out.next_upload_id_marker = root.ChildText("NextUploadIdMarker");
  return out;
}

Result<CompletedUpload> ParseCompleteMultipartUpload(std::string_view xml) {
  ASSIGN_OR_RETURN(Element root, ParseTree(xml, "CompleteMultipartUpload", "CompleteMultipartUploadResult"));
  return CompletedUpload{root.ChildText("Bucket"), root.ChildText("Key"), root.ChildText("ETag")};
}

}  // namespace fhirlake::sink::s3xml
