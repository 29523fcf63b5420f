public import CohortCore
import Foundation
import GRPCCore
import GRPCNIOTransportHTTP2
import Synchronization

/// How a device reaches the server.
public enum ClientSecurity: Sendable {
  /// TLS, trusting only `caPEM`; with a certificate and key, the device proves who it is
  /// (mutual TLS). The server's certificate must name the host the device dials.
  case tls(caPEM: String, certificatePEM: String?, privateKeyPEM: String?)
  /// No TLS (only servers started with `--insecure` on loopback accept it).
  case insecure
}

/// One HTTP/2 connection (with reconnects) to a Cohort server, shared by any number of
/// participations: `cohort device` holds one, `cohort load` holds a few for thousands of
/// virtual devices.
public final class FederationConnection: Sendable {
  let client: GRPCClient<HTTP2ClientTransport.Posix>
  let federation: Cohort_V1_Federation.Client<HTTP2ClientTransport.Posix>
  private let runner = Mutex<Task<Void, Never>?>(nil)

  public init(host: String, port: Int, security: ClientSecurity) throws(CohortError) {
    let transportSecurity: HTTP2ClientTransport.Posix.TransportSecurity
    switch security {
    case .insecure:
      transportSecurity = .plaintext
    case .tls(let ca, let certificate, let key):
      let roots = TLSConfig.TrustRootsSource.certificates([.bytes(Array(ca.utf8), format: .pem)])
      if let certificate, let key {
        transportSecurity = .mTLS(
          certificateChain: [.bytes(Array(certificate.utf8), format: .pem)],
          privateKey: .bytes(Array(key.utf8), format: .pem)
        ) {
          $0.trustRoots = roots
        }
      } else {
        transportSecurity = .tls { $0.trustRoots = roots }
      }
    }
    let isIPv4 = host.split(separator: ".").count == 4 && host.allSatisfy { $0.isNumber || $0 == "." }
    let target: any ResolvableTarget =
      host.contains(":")
      ? .ipv6(address: host, port: port)
      : isIPv4 ? .ipv4(address: host, port: port) : .dns(host: host, port: port)
    do {
      var config = HTTP2ClientTransport.Posix.Config.defaults
      config.connection.maxIdleTime = nil
      let transport = try HTTP2ClientTransport.Posix(
        target: target, transportSecurity: transportSecurity, config: config,
        serviceConfig: ServiceConfig())
      client = GRPCClient(transport: transport)
    } catch {
      throw CohortError(
        .invalidConfiguration, "cannot set up the connection to \(host):\(port): \(error)",
        fix: "check --server and the TLS files")
    }
    federation = Cohort_V1_Federation.Client(wrapping: client)
    let client = self.client
    runner.withLock { $0 = Task { try? await client.runConnections() } }
  }

  /// Closes the connection once open participations end.
  public func close() {
    client.beginGracefulShutdown()
  }

  deinit {
    client.beginGracefulShutdown()
  }
}
