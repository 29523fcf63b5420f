import CohortCore
import CohortOperations
import CohortTransport
import Foundation
import NIOCore
import NIOPosix
import NIOSSL
import Testing
import X509

@Suite struct DevelopmentCertificatesTests {
  /// One PKI for the tests that only read it: P-256 key generation is quick, but not free.
  static let pki = try! DevelopmentCertificates.make(
    hosts: ["fl.example.com", "10.0.0.5", "fe80::1", "[2001:db8::7]", "localhost"], devices: 2)

  @Test func certificatesAndKeysParseWithNIOSSL() throws {
    let pki = Self.pki
    let pairs =
      [(pki.caCertificatePEM, pki.caKeyPEM), (pki.serverCertificatePEM, pki.serverKeyPEM)]
      + pki.devices.map { ($0.certificatePEM, $0.keyPEM) }
    for (certificatePEM, keyPEM) in pairs {
      let certificate = try NIOSSLCertificate(bytes: Array(certificatePEM.utf8), format: .pem)
      let key = try NIOSSLPrivateKey(bytes: Array(keyPEM.utf8), format: .pem)
      #expect(keyPEM.hasPrefix("-----BEGIN PRIVATE KEY-----"))  // PKCS#8
      // BoringSSL refuses a context whose key does not belong to its certificate.
      _ = try NIOSSLContext(
        configuration: .makeServerConfiguration(
          certificateChain: [.certificate(certificate)], privateKey: .privateKey(key)))
    }
  }

  @Test func caIsASelfSignedCertificateAuthority() throws {
    let ca = try Certificate(pemEncoded: Self.pki.caCertificatePEM)
    #expect(ca.subject == ca.issuer)
    #expect(ca.publicKey.isValidSignature(ca.signature, for: ca))
    #expect(try ca.extensions.basicConstraints == .isCertificateAuthority(maxPathLength: 0))
    #expect(try ca.extensions.keyUsage?.keyCertSign == true)
  }

  @Test func serverAndDeviceCertificatesVerifyAgainstTheCA() async throws {
    let pki = Self.pki
    let ca = try Certificate(pemEncoded: pki.caCertificatePEM)
    let leaves = [pki.serverCertificatePEM] + pki.devices.map(\.certificatePEM)
    for pem in leaves {
      let leaf = try Certificate(pemEncoded: pem)
      #expect(try await Self.verifies(leaf, roots: [ca]))
    }
  }

  @Test func certificatesDoNotVerifyAgainstAnotherCA() async throws {
    let other = try DevelopmentCertificates.make(devices: 1)
    let otherCA = try Certificate(pemEncoded: other.caCertificatePEM)
    #expect(
      try await !Self.verifies(Certificate(pemEncoded: Self.pki.serverCertificatePEM), roots: [otherCA]))
    #expect(
      try await !Self.verifies(Certificate(pemEncoded: Self.pki.devices[0].certificatePEM), roots: [otherCA]))
  }

  @Test func serverCertificateNamesTheHostsAndLoopback() throws {
    let server = try Certificate(pemEncoded: Self.pki.serverCertificatePEM)
    let names = try #require(try server.extensions.subjectAlternativeNames)
    var dnsNames: [String] = []
    var addresses: [[UInt8]] = []
    for name in names {
      switch name {
      case .dnsName(let dns): dnsNames.append(dns)
      case .ipAddress(let octets): addresses.append(Array(octets.bytes))
      default: Issue.record("unexpected name \(name)")
      }
    }
    // localhost is given and a default: named once.
    #expect(dnsNames == ["fl.example.com", "localhost"])
    #expect(
      addresses == [
        [10, 0, 0, 5],
        [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
        [127, 0, 0, 1],
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
      ])
    #expect(try server.extensions.extendedKeyUsage?.contains(.serverAuth) == true)
    #expect(try server.extensions.basicConstraints == .notCertificateAuthority)
  }

  @Test func deviceCertificatesAreNamedAndForClientAuthentication() throws {
    #expect(Self.pki.devices.map(\.name) == ["device-1", "device-2"])
    for (index, device) in Self.pki.devices.enumerated() {
      let certificate = try Certificate(pemEncoded: device.certificatePEM)
      #expect(Self.commonName(certificate) == "device-\(index + 1)")
      #expect(try certificate.extensions.extendedKeyUsage?.contains(.clientAuth) == true)
      #expect(try certificate.extensions.extendedKeyUsage?.contains(.serverAuth) == false)
    }
  }

  @Test func validityStartsAnHourAgoAndLastsAsAsked() throws {
    let before = Date()
    let pki = try DevelopmentCertificates.make(devices: 1, validity: .seconds(7 * 24 * 3600))
    let after = Date()
    for pem in [pki.caCertificatePEM, pki.serverCertificatePEM, pki.devices[0].certificatePEM] {
      let certificate = try Certificate(pemEncoded: pem)
      // Certificate times have one-second resolution.
      #expect(certificate.notValidBefore >= before.addingTimeInterval(-3601))
      #expect(certificate.notValidBefore <= after.addingTimeInterval(-3599))
      #expect(certificate.notValidAfter >= before.addingTimeInterval(7 * 24 * 3600 - 1))
      #expect(certificate.notValidAfter <= after.addingTimeInterval(7 * 24 * 3600 + 1))
    }
  }

  @Test(arguments: ["bad host", "a/b", "", "-leading.example.com", "fe80::1%eth0", "1.2.3.4.5:80"])
  func invalidHostsAreRejected(host: String) throws {
    let error = try #require(throws: CohortError.self) {
      try DevelopmentCertificates.make(hosts: [host], devices: 0)
    }
    #expect(error.code == .invalidConfiguration)
    #expect(error.fix.contains("--hosts"))
  }

  @Test func nonPositiveValidityAndNegativeDevicesAreRejected() throws {
    #expect(throws: CohortError.self) { try DevelopmentCertificates.make(validity: .zero) }
    #expect(throws: CohortError.self) { try DevelopmentCertificates.make(devices: -1) }
  }

  @Test func writesEveryFileWithPrivateKeysOwnerOnly() throws {
    let directory = try TemporaryDirectory()
    let out = directory.path + "/certs"  // created by write
    let paths = try Self.pki.write(to: out)
    let expected = [
      "ca.pem", "ca-key.pem", "server.pem", "server-key.pem", "device-1.pem", "device-1-key.pem",
      "device-1-signing.key", "device-2.pem", "device-2-key.pem", "device-2-signing.key",
    ]
    #expect(paths == expected.map { out + "/" + $0 })
    for name in expected {
      let path = out + "/" + name
      let mode = try Self.permissions(path)
      if name.hasSuffix("-key.pem") || name.hasSuffix("-signing.key") {
        #expect(mode == 0o600, "\(name) has mode \(String(mode, radix: 8))")
      } else {
        #expect(mode & 0o077 != 0o077 && mode & 0o600 == 0o600)
      }
    }
    #expect(try String(contentsOfFile: out + "/server-key.pem", encoding: .utf8) == Self.pki.serverKeyPEM)
    #expect(
      try String(contentsOfFile: out + "/device-2.pem", encoding: .utf8) == Self.pki.devices[1].certificatePEM
    )
  }

  @Test func refusesToOverwriteWithoutForce() throws {
    let directory = try TemporaryDirectory()
    try Self.pki.write(to: directory.path)
    // A world-readable leftover key must come back as 0600 when replaced.
    #expect(chmod(directory.path + "/server-key.pem", 0o644) == 0)

    let replacement = try DevelopmentCertificates.make(devices: 2)
    let error = try #require(throws: CohortError.self) { try replacement.write(to: directory.path) }
    #expect(error.message.contains(directory.path + "/ca.pem"))
    #expect(error.fix.contains("--force"))
    // Nothing was replaced.
    #expect(
      try String(contentsOfFile: directory.path + "/ca.pem", encoding: .utf8) == Self.pki.caCertificatePEM)

    try replacement.write(to: directory.path, force: true)
    #expect(
      try String(contentsOfFile: directory.path + "/ca.pem", encoding: .utf8) == replacement.caCertificatePEM)
    #expect(try Self.permissions(directory.path + "/server-key.pem") == 0o600)
  }

  @Test func keysAreNotWrittenThroughASymlinkEvenWithForce() throws {
    let directory = try TemporaryDirectory()
    let target = directory.path + "/elsewhere"
    try FileManager.default.createSymbolicLink(
      atPath: directory.path + "/server-key.pem", withDestinationPath: target)
    for force in [false, true] {
      #expect(throws: CohortError.self) { try Self.pki.write(to: directory.path, force: force) }
      #expect(!FileManager.default.fileExists(atPath: target), "force: \(force)")
    }
  }

  @Test func addsADeviceSignedByAnExistingCAFromFiles() async throws {
    let directory = try TemporaryDirectory()
    try Self.pki.write(to: directory.path)
    let device = try DevelopmentCertificates.makeDevice(
      number: 3, caCertificateFile: directory.path + "/ca.pem", caKeyFile: directory.path + "/ca-key.pem")
    let paths = try device.write(to: directory.path)
    #expect(
      paths == [
        directory.path + "/device-3.pem", directory.path + "/device-3-key.pem",
        directory.path + "/device-3-signing.key",
      ])
    #expect(try Self.permissions(directory.path + "/device-3-key.pem") == 0o600)
    #expect(try Self.permissions(directory.path + "/device-3-signing.key") == 0o600)

    let certificate = try Certificate(pemEncoded: device.certificatePEM)
    #expect(Self.commonName(certificate) == "device-3")
    #expect(try certificate.extensions.extendedKeyUsage?.contains(.clientAuth) == true)
    let ca = try Certificate(pemEncoded: Self.pki.caCertificatePEM)
    #expect(try await Self.verifies(certificate, roots: [ca]))
    _ = try NIOSSLPrivateKey(bytes: Array(device.keyPEM.utf8), format: .pem)

    // Writing device-1 again is refused.
    let again = try DevelopmentCertificates.makeDevice(
      number: 1, caCertificatePEM: Self.pki.caCertificatePEM, caKeyPEM: Self.pki.caKeyPEM)
    #expect(throws: CohortError.self) { try again.write(to: directory.path) }
  }

  @Test func addingADeviceChecksTheCA() throws {
    let pki = Self.pki
    // A server certificate is not a CA.
    let notCA = try #require(throws: CohortError.self) {
      try DevelopmentCertificates.makeDevice(
        number: 1, caCertificatePEM: pki.serverCertificatePEM, caKeyPEM: pki.serverKeyPEM)
    }
    #expect(notCA.message.contains("not a CA"))
    // The key must be the CA's.
    let wrongKey = try #require(throws: CohortError.self) {
      try DevelopmentCertificates.makeDevice(
        number: 1, caCertificatePEM: pki.caCertificatePEM, caKeyPEM: pki.serverKeyPEM)
    }
    #expect(wrongKey.message.contains("not the private key"))
    #expect(throws: CohortError.self) {
      try DevelopmentCertificates.makeDevice(
        number: 1, caCertificatePEM: "not a certificate", caKeyPEM: pki.caKeyPEM)
    }
    #expect(throws: CohortError.self) {
      try DevelopmentCertificates.makeDevice(
        number: 0, caCertificatePEM: pki.caCertificatePEM, caKeyPEM: pki.caKeyPEM)
    }
    let missing = try #require(throws: CohortError.self) {
      try DevelopmentCertificates.makeDevice(
        number: 1, caCertificateFile: "/nonexistent/ca.pem", caKeyFile: "/nonexistent/ca-key.pem")
    }
    #expect(missing.message.contains("/nonexistent/ca.pem"))
  }

  @Test func serverAndDeviceAuthenticateEachOtherOverMutualTLS() async throws {
    let pki = Self.pki
    for hostname in ["localhost", "fl.example.com"] {
      let echoed = try await Self.exchange(
        server: pki, device: pki.devices[1], trusting: pki, hostname: hostname)
      #expect(echoed == "ping")
    }
  }

  @Test func mutualTLSRefusesPeersFromAnotherCA() async throws {
    let pki = Self.pki
    let other = try DevelopmentCertificates.make(devices: 1)
    // A device from another CA: the server refuses it.
    let stranger = try? await Self.exchange(
      server: pki, device: other.devices[0], trusting: pki, hostname: "localhost")
    #expect(stranger != "ping")
    // A device trusting another CA: it refuses the server.
    let distrusting = try? await Self.exchange(
      server: pki, device: other.devices[0], trusting: other, hostname: "localhost")
    #expect(distrusting != "ping")
    // (A wrong host name is not refused here: NIOSSL also accepts the connected address, 127.0.0.1,
    // which every server certificate names. serverIdentityFollowsTheNames checks the names.)
  }

  @Test(
    arguments: [
      ("fl.example.com", nil, true), ("FL.example.com", nil, true), ("localhost", nil, true),
      (nil, "10.0.0.5", true), (nil, "::1", true), (nil, "2001:db8::7", true), (nil, "127.0.0.1", true),
      ("elsewhere.example.com", nil, false), ("example.com", nil, false), (nil, "10.0.0.6", false),
    ] as [(String?, String?, Bool)])
  func serverIdentityFollowsTheNames(hostname: String?, address: String?, matches: Bool) async throws {
    let pki = Self.pki
    let server = try Certificate(pemEncoded: pki.serverCertificatePEM)
    var verifier = Verifier(
      rootCertificates: CertificateStore([try Certificate(pemEncoded: pki.caCertificatePEM)])
    ) {
      RFC5280Policy()
      ServerIdentityPolicy(serverHostname: hostname, serverIP: address)
    }
    let result = await verifier.validate(leaf: server, intermediates: CertificateStore())
    if case .validCertificate = result {
      #expect(matches)
    } else {
      #expect(!matches, "\(result)")
    }
  }

  // MARK: - Helpers

  /// Connects `device` (trusting `trusting`'s CA and expecting `hostname`) to a TLS echo server on
  /// loopback presenting `server`'s certificate and requiring client certificates from its CA;
  /// returns what came back for "ping".
  static func exchange(
    server: DevelopmentCertificates, device: DevelopmentCertificates.Device,
    trusting: DevelopmentCertificates,
    hostname: String
  ) async throws -> String {
    func certificate(_ pem: String) throws -> NIOSSLCertificate {
      try NIOSSLCertificate(bytes: Array(pem.utf8), format: .pem)
    }
    func key(_ pem: String) throws -> NIOSSLPrivateKey {
      try NIOSSLPrivateKey(bytes: Array(pem.utf8), format: .pem)
    }

    let serverContext = try NIOSSLContext(
      configuration: .makeServerConfigurationWithMTLS(
        certificateChain: [.certificate(certificate(server.serverCertificatePEM))],
        privateKey: .privateKey(key(server.serverKeyPEM)),
        trustRoots: .certificates([certificate(server.caCertificatePEM)])))
    var clientConfiguration = TLSConfiguration.makeClientConfiguration()
    clientConfiguration.trustRoots = .certificates([try certificate(trusting.caCertificatePEM)])
    clientConfiguration.certificateChain = [.certificate(try certificate(device.certificatePEM))]
    clientConfiguration.privateKey = .privateKey(try key(device.keyPEM))
    let clientContext = try NIOSSLContext(configuration: clientConfiguration)

    let group = MultiThreadedEventLoopGroup.singleton
    let listener = try await ServerBootstrap(group: group).bind(host: "127.0.0.1", port: 0) { channel in
      channel.eventLoop.makeCompletedFuture {
        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: serverContext))
        return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
      }
    }
    let port = try #require(listener.channel.localAddress?.port)
    return try await withThrowingTaskGroup(of: Void.self) { tasks in
      tasks.addTask {
        try await listener.executeThenClose { connections in
          for try await connection in connections {
            // A refused handshake ends this connection with an error; the client sees it too.
            try? await connection.executeThenClose { inbound, outbound in
              for try await buffer in inbound { try await outbound.write(buffer) }
            }
          }
        }
      }
      defer { tasks.cancelAll() }
      let client = try await ClientBootstrap(group: group).connect(host: "127.0.0.1", port: port) { channel in
        channel.eventLoop.makeCompletedFuture {
          try channel.pipeline.syncOperations.addHandler(
            NIOSSLClientHandler(context: clientContext, serverHostname: hostname))
          return try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
        }
      }
      return try await client.executeThenClose { inbound, outbound in
        try await outbound.write(ByteBuffer(string: "ping"))
        var received = ""
        for try await buffer in inbound {
          received += String(buffer: buffer)
          if received.utf8.count >= 4 { break }
        }
        return received
      }
    }
  }

  /// Whether `leaf` chains to one of `roots` under RFC 5280 (signatures, validity, CA constraints).
  static func verifies(_ leaf: Certificate, roots: [Certificate]) async throws -> Bool {
    var verifier = Verifier(rootCertificates: CertificateStore(roots)) { RFC5280Policy() }
    let result = await verifier.validate(leaf: leaf, intermediates: CertificateStore())
    if case .validCertificate = result { return true }
    return false
  }

  static func commonName(_ certificate: Certificate) -> String? {
    for rdn in certificate.subject {
      for attribute in rdn where attribute.type == .RDNAttributeType.commonName {
        return String(attribute.value)
      }
    }
    return nil
  }

  static func permissions(_ path: String) throws -> Int {
    let attributes = try FileManager.default.attributesOfItem(atPath: path)
    return try #require(attributes[.posixPermissions] as? Int)
  }
}

/// A fresh directory under the system's temporary directory, removed when the value goes away.
private final class TemporaryDirectory {
  let path: String

  init() throws {
    path =
      FileManager.default.temporaryDirectory.appendingPathComponent("cohort-certs-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
  }

  deinit { try? FileManager.default.removeItem(atPath: path) }
}
