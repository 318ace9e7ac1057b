// Replication stream: connection + decoder/assembler + status updates.
#include "pgferry/replication/stream/stream.hpp"

#include <fmt/format.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include "pgferry/replication/core/conninfo.hpp"

namespace pgferry::replication {

ReplicationStream::ReplicationStream(std::string conninfo, StreamOptions options, ChangeSink& sink)
    : conninfo_(std::move(conninfo)), options_(std::move(options)), sink_(sink) {
  validate_conninfo(conninfo_, "--source");
  if (options_.slot.empty()) throw ConfigError("a replication slot name is needed to stream");
  if (options_.publications.empty()) {
    throw ConfigError(
        fmt::format("slot \"{}\": at least one publication is needed to stream", options_.slot));
  }
  if (options_.protocol_version && (*options_.protocol_version < Decoder::kMinProtocolVersion ||
                                    *options_.protocol_version > Decoder::kMaxProtocolVersion)) {
    throw ConfigError(fmt::format("pgoutput protocol version {} is not supported (use 1 to 4)",
                                  *options_.protocol_version));
  }
  if (options_.status_interval.count() <= 0) {
    throw ConfigError("the status interval must be positive");
  }
  if (options_.spool_dir.empty()) {
    options_.spool_dir =
        std::filesystem::temp_directory_path() / fmt::format("pgferry-spool-{}", options_.slot);
  } else {
    // One subdirectory per slot: a session start clears its spool files, and xids of two
    // sources would collide, so agents given the same directory must not share files.
    options_.spool_dir /= options_.slot;
  }
  confirmed_lsn_ = options_.start_lsn;
}

namespace {

using Clock = std::chrono::steady_clock;

// One message as the receiver read it; an XLogData payload points into `buffer`.
struct Received {
  ReplicationConnection::CopyBuffer buffer;
  ReplicationMessage message;
};

std::size_t payload_size(const ReplicationMessage& message) {
  if (const auto* data = std::get_if<XLogData>(&message)) return data->payload.size();
  return 0;
}

}  // namespace

// The thread that owns the replication connection while streaming (see the header).
class ReplicationStream::Receiver {
 public:
  Receiver(ReplicationConnection& connection, const StreamOptions& options, Lsn confirmed)
      : connection_(connection), options_(options), confirmed_(confirmed.value()) {
    wake_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (wake_fd_ < 0) {
      throw Error(fmt::format("replication stream: eventfd failed: {}", std::strerror(errno)));
    }
    thread_ = std::thread([this] { run(); });
  }
  ~Receiver() { stop(); }
  Receiver(const Receiver&) = delete;
  Receiver& operator=(const Receiver&) = delete;

  // Joins the thread; the connection is the caller's again afterwards.
  void stop() noexcept {
    if (thread_.joinable()) {
      stop_.store(true);
      wake();
      space_.notify_all();
      thread_.join();
    }
    if (wake_fd_ >= 0) {
      ::close(wake_fd_);
      wake_fd_ = -1;
    }
  }

  // Waits up to `timeout` for messages and moves all queued ones to `out`. Returns the
  // receiver's error once the queue is empty and the receiver failed.
  std::exception_ptr take(std::chrono::milliseconds timeout, std::deque<Received>& out) {
    std::unique_lock lock(mutex_);
    ready_.wait_for(lock, timeout, [&] { return !queue_.empty() || finished_; });
    out.swap(queue_);
    queued_bytes_ = 0;
    bool failed = finished_ && out.empty();
    lock.unlock();
    space_.notify_one();
    return failed ? error_ : nullptr;
  }

  bool has_queued() {
    std::lock_guard lock(mutex_);
    return !queue_.empty();
  }

  void confirm(Lsn lsn) {
    auto value = lsn.value();
    auto current = confirmed_.load();
    while (current < value && !confirmed_.compare_exchange_weak(current, value)) {
    }
  }
  void request_status(bool reply_requested) {
    status_request_.fetch_or(reply_requested ? 2 : 1);
    wake();
  }
  Lsn received() const { return Lsn{received_.load()}; }

 private:
  void wake() const {
    std::uint64_t one = 1;
    [[maybe_unused]] auto ignored = ::write(wake_fd_, &one, sizeof one);
  }

  void send_status(bool reply_requested) {
    Lsn confirmed{confirmed_.load()};
    connection_.send_status(std::max(received(), confirmed), confirmed, confirmed, reply_requested);
    last_status_ = Clock::now();
  }

  // Requested or due status updates.
  void send_pending_status() {
    int request = status_request_.exchange(0);
    if (request != 0) {
      send_status((request & 2) != 0);
    } else if (Clock::now() - last_status_ >= options_.status_interval) {
      send_status(false);
    }
  }

  // Hands a batch to the consumer, waiting (and keeping the status updates going) while
  // the queue is over its bound.
  void push(std::vector<Received>& batch, std::size_t bytes) {
    std::unique_lock lock(mutex_);
    while (queued_bytes_ > 0 && queued_bytes_ + bytes > options_.receive_buffer_bytes &&
           !stop_.load()) {
      space_.wait_for(lock, std::chrono::milliseconds(100));
      lock.unlock();
      send_pending_status();
      lock.lock();
    }
    for (auto& received : batch) queue_.push_back(std::move(received));
    queued_bytes_ += bytes;
    lock.unlock();
    ready_.notify_one();
    batch.clear();
  }

  // Waits until the socket is readable, a status update is requested, or one is due.
  void wait_readable() {
    auto due = last_status_ + options_.status_interval - Clock::now();
    auto timeout = std::clamp<std::int64_t>(
        std::chrono::duration_cast<std::chrono::milliseconds>(due).count() + 1, 0, 1000);
    pollfd fds[2] = {{PQsocket(connection_.connection().native()), POLLIN, 0},
                     {wake_fd_, POLLIN, 0}};
    if (::poll(fds, 2, static_cast<int>(timeout)) < 0 && errno != EINTR) {
      throw ConnectionError(fmt::format("source ({}): poll on the replication socket failed: {}",
                                        connection_.redacted_conninfo(), std::strerror(errno)),
                            "08006", Side::source);
    }
    if (fds[1].revents & POLLIN) {
      std::uint64_t count = 0;
      [[maybe_unused]] auto ignored = ::read(wake_fd_, &count, sizeof count);
    }
  }

  void run() {
    // A batch is handed over at this size even when more is readable, so that the
    // consumer can start on it.
    constexpr std::size_t kBatchBytes = 256u << 10;
    last_status_ = Clock::now();
    std::vector<Received> batch;
    try {
      bool ended = false;
      while (!stop_.load() && !ended) {
        std::size_t bytes = 0;
        while (bytes < kBatchBytes) {
          auto message = connection_.read(std::chrono::milliseconds(0));
          if (!message) break;
          if (const auto* data = std::get_if<XLogData>(&*message)) {
            note_received(std::max(data->wal_start, data->wal_end));
          } else if (const auto* keepalive = std::get_if<Keepalive>(&*message)) {
            note_received(keepalive->wal_end);
            if (keepalive->reply_requested) send_status(false);
          } else {
            ended = true;
          }
          bytes += payload_size(*message) + 64;
          batch.push_back({connection_.take_buffer(), std::move(*message)});
          if (ended) break;
        }
        if (!batch.empty()) push(batch, bytes);
        send_pending_status();
        if (ended) break;
        if (bytes == 0) {
          wait_readable();
        } else if (options_.read_coalesce.count() > 0 && bytes < kBatchBytes) {
          std::this_thread::sleep_for(options_.read_coalesce);
        }
      }
    } catch (...) {
      // What was read before the error is handed over first.
      std::lock_guard lock(mutex_);
      for (auto& received : batch) queue_.push_back(std::move(received));
      error_ = std::current_exception();
    }
    {
      std::lock_guard lock(mutex_);
      finished_ = true;
    }
    ready_.notify_all();
  }

  void note_received(Lsn lsn) {
    if (lsn.value() > received_.load()) received_.store(lsn.value());
  }

  ReplicationConnection& connection_;
  const StreamOptions& options_;
  std::thread thread_;
  int wake_fd_ = -1;
  std::atomic<bool> stop_{false};
  std::atomic<std::uint64_t> confirmed_;
  std::atomic<std::uint64_t> received_{0};
  std::atomic<int> status_request_{0};  // bit 0: send one, bit 1: with reply_requested
  Clock::time_point last_status_{};     // receiver thread only

  std::mutex mutex_;
  std::condition_variable ready_;
  std::condition_variable space_;
  std::deque<Received> queue_;
  std::size_t queued_bytes_ = 0;
  bool finished_ = false;
  std::exception_ptr error_;
};

ReplicationStream::~ReplicationStream() {
  stop_receiver();
}

void ReplicationStream::stop_receiver() noexcept {
  if (receiver_) {
    receiver_->stop();
    receiver_.reset();
  }
}

void ReplicationStream::start() {
  stop_receiver();
  connection_.reset();
  assembler_.reset();
  ended_ = false;
  received_bytes_ = 0;
  connection_.emplace(ReplicationConnection::open(conninfo_));
  int server_max = connection_->max_protocol_version();
  protocol_version_ = options_.protocol_version.value_or(server_max);

  StartOptions start;
  start.protocol_version = protocol_version_;
  start.publications = options_.publications;
  start.streaming = options_.streaming && protocol_version_ >= 2;
  start.parallel_streaming =
      start.streaming && options_.parallel_streaming && protocol_version_ >= 4;
  start.binary = options_.binary;
  // pgoutput takes the messages option from PostgreSQL 14 on (protocol v2).
  start.messages = options_.messages && server_max >= 2;
  if (options_.messages && !start.messages) {
    spdlog::warn(
        "streaming slot={}: the source (before PostgreSQL 14) cannot send logical messages, so "
        "`pgferry cutover` refuses it (its fence travels as one)",
        options_.slot);
  }
  assembler_.emplace(sink_, options_.spool_dir, protocol_version_,
                     DecoderOptions{.parallel_streaming = start.parallel_streaming});
  connection_->start_replication(options_.slot, options_.start_lsn, start);
  received_lsn_ = std::max(received_lsn_, options_.start_lsn);
  receiver_ = std::make_unique<Receiver>(*connection_, options_, confirmed_lsn_);
  spdlog::info("streaming slot={} lsn={} proto={} streaming={} source={}", options_.slot,
               options_.start_lsn, protocol_version_,
               start.parallel_streaming ? "parallel" : (start.streaming ? "on" : "off"),
               connection_->redacted_conninfo());
}

void ReplicationStream::handle(const ReplicationMessage& message) {
  std::visit(
      [&](const auto& m) {
        using T = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<T, XLogData>) {
          received_lsn_ = std::max({received_lsn_, m.wal_start, m.wal_end});
          received_bytes_ += m.payload.size();
          if (!m.payload.empty()) assembler_->on_message(m.payload);
        } else if constexpr (std::is_same_v<T, Keepalive>) {
          received_lsn_ = std::max(received_lsn_, m.wal_end);
          server_wal_end_ = std::max(server_wal_end_, m.wal_end);
          assembler_->on_keepalive(m.wal_end);
        } else {
          ended_ = true;
        }
      },
      message);
}

bool ReplicationStream::poll(std::chrono::milliseconds timeout) {
  if (!connection_) throw Error("replication stream: poll() before start()");
  if (ended_) return false;
  if (!receiver_) throw Error("replication stream: poll() after stop()");
  std::deque<Received> received;
  auto error = receiver_->take(std::min(timeout, options_.status_interval), received);
  for (const auto& r : received) {
    handle(r.message);
    if (ended_) break;
  }
  if (error) std::rethrow_exception(error);
  return !ended_;
}

bool ReplicationStream::has_queued() const {
  return receiver_ && receiver_->has_queued();
}

void ReplicationStream::confirm(Lsn durable) {
  confirmed_lsn_ = std::max(confirmed_lsn_, durable);
  if (receiver_) receiver_->confirm(confirmed_lsn_);
}

void ReplicationStream::send_status(bool reply_requested) {
  if (receiver_) {
    receiver_->request_status(reply_requested);
  } else if (connection_ && connection_->streaming()) {
    connection_->send_status(std::max(received_lsn_, confirmed_lsn_), confirmed_lsn_,
                             confirmed_lsn_, reply_requested);
  }
}

void ReplicationStream::stop() {
  if (!connection_) return;
  stop_receiver();
  if (connection_->streaming()) {
    send_status();
    connection_->end_copy();
  }
  connection_.reset();
  ended_ = true;
}

}  // namespace pgferry::replication
