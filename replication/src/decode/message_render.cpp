// Rendering decoded pgoutput messages as text and JSON (message_render.hpp).
#include "pgferry/replication/decode/message_render.hpp"

#include <fmt/format.h>

#include <variant>

#include "pgferry/replication/core/ids.hpp"

namespace pgferry::replication {

namespace {

namespace pg = pgoutput;
using nlohmann::json;

template <typename... Fs>
struct Overloaded : Fs... {
  using Fs::operator()...;
};
template <typename... Fs>
Overloaded(Fs...) -> Overloaded<Fs...>;

std::string hex(std::string_view bytes) {
  std::string out = "\\x";
  for (unsigned char c : bytes) out += fmt::format("{:02x}", c);
  return out;
}

void set_xid(json& doc, std::optional<Xid> xid) {
  if (xid) doc["xid"] = xid->value;
}
std::string xid_text(std::optional<Xid> xid) {
  return xid ? fmt::format(" xid={}", xid->value) : "";
}

}  // namespace

RenderedMessage MessageRenderer::render(Lsn lsn, const pg::Message& message) {
  RenderedMessage rendered;
  json& doc = rendered.json;
  doc["lsn"] = lsn.to_string();
  rendered.text = std::visit(
      Overloaded{
          [&](const pg::Begin& m) {
            doc["type"] = "begin";
            doc["xid"] = m.xid.value;
            doc["final_lsn"] = m.final_lsn.to_string();
            doc["commit_time"] = to_pg_timestamp(m.commit_time);
            return fmt::format("BEGIN xid={} final_lsn={}", m.xid.value, m.final_lsn);
          },
          [&](const pg::Commit& m) {
            doc["type"] = "commit";
            doc["commit_lsn"] = m.commit_lsn.to_string();
            doc["end_lsn"] = m.end_lsn.to_string();
            doc["commit_time"] = to_pg_timestamp(m.commit_time);
            return fmt::format("COMMIT commit_lsn={} end_lsn={}", m.commit_lsn, m.end_lsn);
          },
          [&](const pg::Origin& m) {
            doc["type"] = "origin";
            doc["origin_lsn"] = m.commit_lsn.to_string();
            doc["name"] = m.name;
            return fmt::format("ORIGIN {} lsn={}", m.name, m.commit_lsn);
          },
          [&](const pg::RelationMessage& m) {
            const auto& relation = relations_.update(m);
            set_xid(doc, m.xid);
            doc["type"] = "relation";
            doc["relation_id"] = m.id.value;
            doc["relation"] = relation.qualified_name();
            doc["replica_identity"] = std::string(1, m.replica_identity);
            json columns = json::array();
            std::string names;
            for (const auto& column : m.columns) {
              columns.push_back({{"name", column.name},
                                 {"type_oid", column.type_oid.value},
                                 {"type_modifier", column.type_modifier},
                                 {"key", column.is_key()}});
              names += fmt::format(" {}{}", column.name, column.is_key() ? "*" : "");
            }
            doc["columns"] = columns;
            return fmt::format("RELATION{} {} id={} identity={}{}", xid_text(m.xid),
                               relation.qualified_name(), m.id.value, m.replica_identity, names);
          },
          [&](const pg::TypeMessage& m) {
            set_xid(doc, m.xid);
            doc["type"] = "type";
            doc["type_oid"] = m.id.value;
            doc["name"] = fmt::format("{}.{}", m.nspname, m.name);
            return fmt::format("TYPE{} {}.{} oid={}", xid_text(m.xid), m.nspname, m.name,
                               m.id.value);
          },
          [&](const pg::Insert& m) {
            set_xid(doc, m.xid);
            doc["type"] = "insert";
            return change_text("INSERT", m.xid, m.relation, doc, {}, 0, m.new_tuple);
          },
          [&](const pg::Update& m) {
            set_xid(doc, m.xid);
            doc["type"] = "update";
            return change_text("UPDATE", m.xid, m.relation, doc, m.old_tuple, m.old_kind,
                               m.new_tuple);
          },
          [&](const pg::Delete& m) {
            set_xid(doc, m.xid);
            doc["type"] = "delete";
            return change_text("DELETE", m.xid, m.relation, doc, m.old_tuple, m.old_kind, {});
          },
          [&](const pg::Truncate& m) {
            set_xid(doc, m.xid);
            doc["type"] = "truncate";
            doc["cascade"] = (m.flags & pg::Truncate::kCascade) != 0;
            doc["restart_identity"] = (m.flags & pg::Truncate::kRestartIdentity) != 0;
            json names = json::array();
            std::string listed;
            for (auto id : m.relations) {
              names.push_back(relation_name(id));
              listed += " " + relation_name(id);
            }
            doc["relations"] = names;
            return fmt::format("TRUNCATE{}{} flags={}", xid_text(m.xid), listed, m.flags);
          },
          [&](const pg::LogicalMessage& m) {
            set_xid(doc, m.xid);
            std::string_view content(reinterpret_cast<const char*>(m.content.data()),
                                     m.content.size());
            doc["type"] = "message";
            doc["transactional"] = m.transactional;
            doc["message_lsn"] = m.lsn.to_string();
            doc["prefix"] = m.prefix;
            doc["content"] = content;
            return fmt::format("MESSAGE{} prefix={} transactional={} content={}", xid_text(m.xid),
                               m.prefix, m.transactional, content);
          },
          [&](const pg::StreamStart& m) {
            doc["type"] = "stream_start";
            doc["xid"] = m.xid.value;
            doc["first_segment"] = m.first_segment;
            return fmt::format("STREAM START xid={} first={}", m.xid.value, m.first_segment);
          },
          [&](const pg::StreamStop&) {
            doc["type"] = "stream_stop";
            return std::string("STREAM STOP");
          },
          [&](const pg::StreamCommit& m) {
            doc["type"] = "stream_commit";
            doc["xid"] = m.xid.value;
            doc["commit_lsn"] = m.commit_lsn.to_string();
            doc["end_lsn"] = m.end_lsn.to_string();
            doc["commit_time"] = to_pg_timestamp(m.commit_time);
            return fmt::format("STREAM COMMIT xid={} commit_lsn={} end_lsn={}", m.xid.value,
                               m.commit_lsn, m.end_lsn);
          },
          [&](const pg::StreamAbort& m) {
            doc["type"] = "stream_abort";
            doc["xid"] = m.xid.value;
            doc["subxid"] = m.subxid.value;
            if (m.abort_lsn) doc["abort_lsn"] = m.abort_lsn->to_string();
            return fmt::format("STREAM ABORT xid={} subxid={}", m.xid.value, m.subxid.value);
          },
          [&](const pg::BeginPrepare& m) {
            doc["type"] = "begin_prepare";
            doc["xid"] = m.xid.value;
            doc["gid"] = m.gid;
            doc["prepare_lsn"] = m.prepare_lsn.to_string();
            doc["end_lsn"] = m.end_lsn.to_string();
            return fmt::format("BEGIN PREPARE xid={} gid={} prepare_lsn={}", m.xid.value, m.gid,
                               m.prepare_lsn);
          },
          [&](const pg::Prepare& m) {
            doc["type"] = m.streamed ? "stream_prepare" : "prepare";
            doc["xid"] = m.xid.value;
            doc["gid"] = m.gid;
            doc["prepare_lsn"] = m.prepare_lsn.to_string();
            doc["end_lsn"] = m.end_lsn.to_string();
            return fmt::format("{} xid={} gid={} prepare_lsn={} end_lsn={}",
                               m.streamed ? "STREAM PREPARE" : "PREPARE", m.xid.value, m.gid,
                               m.prepare_lsn, m.end_lsn);
          },
          [&](const pg::CommitPrepared& m) {
            doc["type"] = "commit_prepared";
            doc["xid"] = m.xid.value;
            doc["gid"] = m.gid;
            doc["commit_lsn"] = m.commit_lsn.to_string();
            doc["end_lsn"] = m.end_lsn.to_string();
            return fmt::format("COMMIT PREPARED xid={} gid={} end_lsn={}", m.xid.value, m.gid,
                               m.end_lsn);
          },
          [&](const pg::RollbackPrepared& m) {
            doc["type"] = "rollback_prepared";
            doc["xid"] = m.xid.value;
            doc["gid"] = m.gid;
            doc["rollback_end_lsn"] = m.rollback_end_lsn.to_string();
            return fmt::format("ROLLBACK PREPARED xid={} gid={}", m.xid.value, m.gid);
          },
      },
      message);
  return rendered;
}

std::string MessageRenderer::relation_name(RelationId id) const {
  const auto* relation = relations_.find(id);
  return relation ? relation->qualified_name() : fmt::format("<relation {}>", id.value);
}

std::string MessageRenderer::tuple_text(const Relation* relation, pg::TupleView tuple,
                                        json& out) const {
  out = json::object();
  std::string text;
  for (std::size_t i = 0; i < tuple.size(); ++i) {
    std::string name = relation && i < relation->columns.size() ? relation->columns[i].name
                                                                : fmt::format("${}", i + 1);
    const auto& column = tuple[i];
    switch (column.kind) {
      case pg::ColumnKind::null:
        out[name] = nullptr;
        text += fmt::format(" {}=NULL", name);
        break;
      case pg::ColumnKind::unchanged_toast:
        out[name] = {{"unchanged_toast", true}};
        text += fmt::format(" {}=<unchanged toast>", name);
        break;
      case pg::ColumnKind::text:
        out[name] = column.data;
        text += fmt::format(" {}='{}'", name, column.data);
        break;
      case pg::ColumnKind::binary:
        out[name] = {{"binary", hex(column.data)}};
        text += fmt::format(" {}={}", name, hex(column.data));
        break;
    }
  }
  return text;
}

std::string MessageRenderer::change_text(const char* verb, std::optional<Xid> xid, RelationId id,
                                         json& doc, pg::TupleView old_tuple, char old_kind,
                                         pg::TupleView new_tuple) const {
  const auto* relation = relations_.find(id);
  doc["relation"] = relation_name(id);
  std::string text = fmt::format("{}{} {}", verb, xid_text(xid), relation_name(id));
  if (old_kind != 0) {
    json old;
    text += fmt::format(" old({}):", old_kind == 'K' ? "key" : "row");
    text += tuple_text(relation, old_tuple, old);
    doc[old_kind == 'K' ? "old_key" : "old"] = old;
  }
  if (verb[0] != 'D') {
    json fresh;
    text += " new:";
    text += tuple_text(relation, new_tuple, fresh);
    doc["new"] = fresh;
  }
  return text;
}

}  // namespace pgferry::replication
