// `init --schema`: pg_dump of one section into a temporary file, restored by psql in one
// transaction (see initial_copy_schema.hpp).
#include "pgferry/replication/copy/initial_copy_schema.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <libpq-fe.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "pgferry/replication/core/error.hpp"
#include "pgferry/replication/core/pg.hpp"

extern char** environ;

namespace pgferry::replication {

namespace {

namespace fs = std::filesystem;

// A conninfo string without its password, and the password.
struct SplitConninfo {
  std::string conninfo;
  std::string password;
};

SplitConninfo split_password(std::string_view conninfo) {
  char* error = nullptr;
  PQconninfoOption* options = PQconninfoParse(std::string(conninfo).c_str(), &error);
  if (options == nullptr) {
    std::string message = error ? error : "out of memory";
    if (error) PQfreemem(error);
    throw ConfigError(fmt::format("invalid conninfo: {}", message));
  }
  SplitConninfo split;
  for (auto* option = options; option->keyword != nullptr; ++option) {
    if (option->val == nullptr || option->val[0] == '\0') continue;
    std::string_view keyword = option->keyword;
    if (keyword == "password") {
      split.password = option->val;
      continue;
    }
    std::string value;
    for (const char* c = option->val; *c; ++c) {
      if (*c == '\'' || *c == '\\') value += '\\';
      value += *c;
    }
    if (!split.conninfo.empty()) split.conninfo += ' ';
    split.conninfo += fmt::format("{}='{}'", keyword, value);
  }
  PQconninfoFree(options);
  return split;
}

std::string find_bindir(const std::string& configured) {
  if (!configured.empty()) return configured;
  if (const char* env = std::getenv("PGFERRY_PG_BINDIR"); env && *env) return env;
  if (FILE* pipe = ::popen("pg_config --bindir 2>/dev/null", "r")) {
    char buffer[4096];
    std::string out;
    while (std::fgets(buffer, sizeof buffer, pipe)) out += buffer;
    ::pclose(pipe);
    while (!out.empty() && (out.back() == '\n' || out.back() == '\r')) out.pop_back();
    if (!out.empty() && fs::exists(fs::path(out) / "pg_dump")) return out;
  }
  return "";  // rely on $PATH
}

std::string tool_path(const std::string& bindir, const char* tool) {
  return bindir.empty() ? std::string(tool) : (fs::path(bindir) / tool).string();
}

// Runs argv with PGPASSWORD set (when non-empty) and `pgoptions` appended to PGOPTIONS,
// stdout to `out_path` (or /dev/null), stderr to `err_path`. Returns the exit status.
int run_tool(const std::vector<std::string>& argv, const std::string& password,
             const std::string& out_path, const std::string& err_path,
             const std::string& pgoptions = {}) {
  std::vector<std::string> env_strings;
  std::string options = pgoptions;
  for (char** e = environ; *e; ++e) {
    if (std::strncmp(*e, "PGPASSWORD=", 11) == 0) continue;
    if (!pgoptions.empty() && std::strncmp(*e, "PGOPTIONS=", 10) == 0) {
      options = std::string(*e + 10) + " " + pgoptions;
      continue;
    }
    env_strings.emplace_back(*e);
  }
  if (!password.empty()) env_strings.push_back("PGPASSWORD=" + password);
  if (!options.empty()) env_strings.push_back("PGOPTIONS=" + options);
  std::vector<char*> env;
  for (auto& s : env_strings) env.push_back(s.data());
  env.push_back(nullptr);
  std::vector<std::string> copy = argv;
  std::vector<char*> args;
  for (auto& arg : copy) args.push_back(arg.data());
  args.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, out_path.empty() ? "/dev/null" : out_path.c_str(),
                                   O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                   0600);
  pid_t pid = 0;
  int rc = posix_spawnp(&pid, args[0], &actions, nullptr, args.data(), env.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    throw ConfigError(
        fmt::format("cannot run {}: {}; install the PostgreSQL client tools or "
                    "point --pg-bindir at them",
                    argv[0], std::strerror(rc)));
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  return 128 + (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  std::string s = text.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// A private temporary directory, removed with its contents.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "pgferry-schema-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw ConfigError(
          fmt::format("cannot create a temporary directory: {}", std::strerror(errno)));
    }
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const char* name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

}  // namespace

std::string comment_out_unknown_settings(std::string_view sql, const std::set<std::string>& known) {
  std::string out;
  out.reserve(sql.size());
  std::size_t pos = 0;
  while (pos < sql.size()) {
    auto end = sql.find('\n', pos);
    if (end == std::string_view::npos) end = sql.size();
    std::string_view line = sql.substr(pos, end - pos);
    // pg_dump's form: SET name = value;  (one line, the name in lower case)
    if (line.starts_with("SET ") && line.ends_with(";")) {
      auto name_end = line.find(' ', 4);
      std::string name(line.substr(4, name_end == std::string_view::npos ? 0 : name_end - 4));
      if (!name.empty() && !known.contains(name)) {
        out += "-- pgferry: the target has no setting ";
        out += name;
        out += ": ";
      }
    }
    out += line;
    if (end < sql.size()) out += '\n';
    pos = end + 1;
  }
  return out;
}

bool is_size_setting(std::string_view value) {
  auto digits = value.find_first_not_of("0123456789");
  auto unit = digits == std::string_view::npos ? std::string_view() : value.substr(digits);
  return digits != 0 && (unit.empty() || unit == "kB" || unit == "MB" || unit == "GB");
}

void copy_schema_section(std::string_view source_conninfo, std::string_view target_conninfo,
                         SchemaSection section, const SchemaCopyOptions& options) {
  std::string bindir = find_bindir(options.bindir);
  auto source = split_password(source_conninfo);
  auto target = split_password(target_conninfo);
  const char* section_name = section == SchemaSection::pre_data ? "pre-data" : "post-data";
  TempDir dir;

  std::vector<std::string> dump = {tool_path(bindir, "pg_dump"),
                                   "--schema-only",
                                   fmt::format("--section={}", section_name),
                                   "--no-publications",
                                   "--no-subscriptions",
                                   "--exclude-schema=pgferry",
                                   "-d",
                                   source.conninfo};
  for (const auto& table : options.tables) dump.push_back("--table=" + table);
  int status = run_tool(dump, source.password, dir.file("schema.sql"), dir.file("dump.err"));
  if (status != 0) {
    std::string error = read_file(dir.file("dump.err"));
    if (error.find("server version mismatch") != std::string::npos) {
      // pg_dump refuses a server newer than itself (a rollback's reverse direction, or an
      // old client next to a new source).
      throw ConfigError(fmt::format(
          "{} cannot dump the source, which is newer than it: {}; point --pg-bindir at the "
          "client tools of the source's major version or newer (tools/build-postgres.sh MAJOR "
          "builds them)",
          dump[0], error));
    }
    throw SqlError(fmt::format("pg_dump --section={} of the source failed (exit {}): {}",
                               section_name, status, error),
                   "", Side::source);
  }

  if (section == SchemaSection::pre_data && !options.tables.empty()) {
    // -t dumps no schemas: create the tables' schemas first.
    std::set<std::string> schemas(options.schemas.begin(), options.schemas.end());
    std::string sql;
    for (const auto& schema : schemas) {
      sql += fmt::format("CREATE SCHEMA IF NOT EXISTS {};\n", quote_ident(schema));
    }
    std::string original = read_file(dir.file("schema.sql"));
    std::ofstream out(dir.file("schema.sql"), std::ios::trunc);
    // psql meta-commands (\restrict) must stay first: put the schemas after them.
    auto first_sql = original.find("\nSET ");
    if (first_sql == std::string::npos) first_sql = 0;
    out << original.substr(0, first_sql) << "\n" << sql << original.substr(first_sql) << "\n";
  }

  {
    // A newer pg_dump sets session parameters an older target does not have (pg_dump 17+:
    // transaction_timeout); replicating back to the old server (rollback) meets that.
    auto conn = Connection::open(target_conninfo, Side::target);
    Result known = conn.exec("SELECT name FROM pg_settings", "listing the target's settings");
    std::set<std::string> names;
    for (int i = 0; i < known.rows(); ++i) names.emplace(known.get(i, 0));
    std::string original = read_file(dir.file("schema.sql"));
    std::string filtered = comment_out_unknown_settings(original, names);
    if (filtered != original) {
      std::ofstream out(dir.file("schema.sql"), std::ios::trunc);
      out << filtered << "\n";
    }
  }

  std::vector<std::string> restore = {tool_path(bindir, "psql"),
                                      "-X",
                                      "-q",
                                      "-v",
                                      "ON_ERROR_STOP=1",
                                      "--single-transaction",
                                      "-f",
                                      dir.file("schema.sql"),
                                      "-d",
                                      target.conninfo};
  std::string pgoptions;
  if (section == SchemaSection::post_data && !options.maintenance_work_mem.empty()) {
    const auto& value = options.maintenance_work_mem;
    if (!is_size_setting(value)) {
      throw ConfigError(fmt::format(
          "maintenance_work_mem \"{}\" is not a size: use a number with kB, MB or GB", value));
    }
    pgoptions = "-c maintenance_work_mem=" + value;
  }
  status = run_tool(restore, target.password, "", dir.file("restore.err"), pgoptions);
  if (status != 0) {
    throw SqlError(
        fmt::format("restoring the source's {} schema section on the target failed (exit "
                    "{}), nothing of it was kept: {}",
                    section_name, status, read_file(dir.file("restore.err"))),
        "", Side::target);
  }
  spdlog::info("init: schema section {} restored on the target ({} tables)", section_name,
               options.tables.empty() ? std::string("all") : std::to_string(options.tables.size()));
}

}  // namespace pgferry::replication
