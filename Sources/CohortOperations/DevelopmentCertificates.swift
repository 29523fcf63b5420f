import CohortCore
import CohortSecAgg
import CohortTransport
import Crypto
import Foundation
import X509

#if canImport(Glibc)
  import Glibc
#elseif canImport(Musl)
  import Musl
#elseif canImport(Darwin)
  import Darwin
#endif

/// A throwaway public-key infrastructure for development and tests: a CA, a server certificate and
/// device (client) certificates, all P-256 and signed by the CA. Each device also gets a long-term
/// Ed25519 signing key (libsodium), whose public half its certificate carries in the extension
/// ``DeviceSigningKeyExtension``: the identity key of the active secure-aggregation variant.
///
/// The server presents `server.pem` and trusts devices whose certificates chain to `ca.pem` (mTLS);
/// devices trust the server through the same `ca.pem`. Keys are PKCS#8 PEM. Not for production:
/// the CA key sits next to the certificates it signs.
public struct DevelopmentCertificates: Sendable, Hashable {
  /// One device's certificate (common name `device-<number>`, extended key usage clientAuth, its
  /// signing key in ``DeviceSigningKeyExtension``), its TLS private key and its signing key.
  public struct Device: Sendable, Hashable {
    /// The device's number, from 1; its common name is `device-<number>`.
    public var number: Int
    public var certificatePEM: String
    /// PKCS#8 PEM.
    public var keyPEM: String
    /// The Ed25519 signing key, PKCS#8 PEM (``DeviceSigningKeyFile``); empty for a device made
    /// without one.
    public var signingKeyPEM: String

    public init(number: Int, certificatePEM: String, keyPEM: String, signingKeyPEM: String = "") {
      self.number = number
      self.certificatePEM = certificatePEM
      self.keyPEM = keyPEM
      self.signingKeyPEM = signingKeyPEM
    }

    /// `device-<number>`: the certificate's common name and the stem of its file names.
    public var name: String { DevelopmentCertificates.deviceName(number) }
    /// `device-<number>.pem`.
    public var certificateFileName: String { "\(name).pem" }
    /// `device-<number>-key.pem`.
    public var keyFileName: String { "\(name)-key.pem" }
    /// `device-<number>-signing.key`.
    public var signingKeyFileName: String { "\(name)-signing.key" }

    /// The files of this device: certificate, TLS key, signing key (when it has one).
    fileprivate var files: [PEMFile] {
      [
        PEMFile(name: certificateFileName, contents: certificatePEM, isPrivateKey: false),
        PEMFile(name: keyFileName, contents: keyPEM, isPrivateKey: true),
      ]
        + (signingKeyPEM.isEmpty
          ? [] : [PEMFile(name: signingKeyFileName, contents: signingKeyPEM, isPrivateKey: true)])
    }

    /// Writes `device-<number>.pem`, `device-<number>-key.pem` and `device-<number>-signing.key`
    /// (the keys with mode 0600) into `directory`, creating it if needed, and returns the paths
    /// written. Refuses to replace an existing file unless `force` is set.
    @discardableResult
    public func write(to directory: String, force: Bool = false) throws -> [String] {
      try DevelopmentCertificates.write(files, to: directory, force: force)
    }
  }

  /// A year.
  public static let defaultValidity: Duration = .seconds(365 * 24 * 60 * 60)
  /// Names every server certificate covers, besides the hosts asked for.
  public static let defaultHosts = ["localhost", "127.0.0.1", "::1"]

  public static let caCertificateFileName = "ca.pem"
  public static let caKeyFileName = "ca-key.pem"
  public static let serverCertificateFileName = "server.pem"
  public static let serverKeyFileName = "server-key.pem"

  /// The self-signed CA certificate that devices and the server trust.
  public var caCertificatePEM: String
  /// The CA's private key (PKCS#8 PEM): whoever holds it can issue certificates both sides trust.
  public var caKeyPEM: String
  /// The server's certificate (extended key usage serverAuth), naming the hosts it serves.
  public var serverCertificatePEM: String
  /// The server's private key (PKCS#8 PEM).
  public var serverKeyPEM: String
  /// Device certificates `device-1` … `device-N`, in order.
  public var devices: [Device]

  public init(
    caCertificatePEM: String, caKeyPEM: String, serverCertificatePEM: String, serverKeyPEM: String,
    devices: [Device]
  ) {
    self.caCertificatePEM = caCertificatePEM
    self.caKeyPEM = caKeyPEM
    self.serverCertificatePEM = serverCertificatePEM
    self.serverKeyPEM = serverKeyPEM
    self.devices = devices
  }

  /// Makes a new CA, a server certificate for `hosts` (plus ``defaultHosts``) and `devices` device
  /// certificates numbered from `firstDevice` (1 for `cohort certs create`; tests whose devices
  /// count from 0 pass 0), valid from an hour ago (to tolerate clock skew) for `validity`.
  ///
  /// Each host that is an IPv4 or IPv6 literal (`10.0.0.5`, `fe80::1`, `[::1]`) becomes an IP
  /// address subject alternative name; anything else becomes a DNS name.
  public static func make(
    hosts: [String] = [], devices: Int = 3, firstDevice: Int = 1, validity: Duration = defaultValidity
  ) throws -> DevelopmentCertificates {
    guard devices >= 0 else {
      throw CohortError(
        .invalidConfiguration, "the number of devices must be 0 or more, got \(devices)",
        fix: "pass --devices N with N ≥ 0")
    }
    guard firstDevice >= 0 else {
      throw CohortError(
        .invalidConfiguration, "device numbers start at 0 or more, got \(firstDevice)",
        fix: "pass a first device number of 0 or more")
    }
    let names = try subjectAlternativeNames(for: hosts)
    let (notBefore, notAfter) = try validityPeriod(validity)

    let caKey = P256.Signing.PrivateKey()
    let caPrivateKey = Certificate.PrivateKey(caKey)
    let caName = try DistinguishedName {
      OrganizationName("Cohort")
      CommonName("Cohort Development CA")
    }
    let ca = try issue(
      Certificate(
        version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: caPrivateKey.publicKey,
        notValidBefore: notBefore, notValidAfter: notAfter, issuer: caName, subject: caName,
        signatureAlgorithm: .ecdsaWithSHA256,
        extensions: Certificate.Extensions {
          Critical(BasicConstraints.isCertificateAuthority(maxPathLength: 0))
          Critical(KeyUsage(digitalSignature: true, keyCertSign: true, cRLSign: true))
          SubjectKeyIdentifier(hash: caPrivateKey.publicKey)
        },
        issuerPrivateKey: caPrivateKey),
      what: "the CA certificate")
    let issuer = Issuer(certificate: ca, key: caPrivateKey)

    let serverKey = P256.Signing.PrivateKey()
    let server = try issuer.issue(
      subject: DistinguishedName {
        OrganizationName("Cohort")
        CommonName("cohort-server")
      },
      publicKey: Certificate.PublicKey(serverKey.publicKey), notBefore: notBefore, notAfter: notAfter,
      usage: .serverAuth, subjectAlternativeNames: names)

    var deviceCredentials: [Device] = []
    for number in firstDevice..<(firstDevice + devices) {
      deviceCredentials.append(
        try issuer.issueDevice(number: number, notBefore: notBefore, notAfter: notAfter))
    }

    return DevelopmentCertificates(
      caCertificatePEM: try pem(ca, what: "the CA certificate"), caKeyPEM: caKey.pemRepresentation,
      serverCertificatePEM: try pem(server, what: "the server certificate"),
      serverKeyPEM: serverKey.pemRepresentation, devices: deviceCredentials)
  }

  /// Makes certificate `device-<number>` signed by an existing CA, given as PEM text (the contents
  /// of `ca.pem` and `ca-key.pem`), so devices can be added after the server has been set up.
  public static func makeDevice(
    number: Int, caCertificatePEM: String, caKeyPEM: String, validity: Duration = defaultValidity
  ) throws -> Device {
    try makeDevice(
      number: number, caCertificatePEM: caCertificatePEM, caKeyPEM: caKeyPEM, validity: validity,
      source: (caCertificatePEM: "the CA certificate", caKeyPEM: "the CA key"))
  }

  /// Makes certificate `device-<number>` signed by the CA in the PEM files `caCertificateFile`
  /// (`ca.pem`) and `caKeyFile` (`ca-key.pem`). Write it with ``Device/write(to:force:)``.
  public static func makeDevice(
    number: Int, caCertificateFile: String, caKeyFile: String, validity: Duration = defaultValidity
  ) throws -> Device {
    try makeDevice(
      number: number, caCertificatePEM: try readText(caCertificateFile, what: "CA certificate"),
      caKeyPEM: try readText(caKeyFile, what: "CA key"), validity: validity,
      source: (caCertificatePEM: caCertificateFile, caKeyPEM: caKeyFile))
  }

  /// Writes `ca.pem`, `ca-key.pem`, `server.pem`, `server-key.pem`, `device-<n>.pem`,
  /// `device-<n>-key.pem` and `device-<n>-signing.key` into `directory`, creating it if needed, and returns the paths written.
  /// Private keys get mode 0600. Refuses to replace any existing file (and then writes nothing)
  /// unless `force` is set.
  @discardableResult
  public func write(to directory: String, force: Bool = false) throws -> [String] {
    var files = [
      PEMFile(name: Self.caCertificateFileName, contents: caCertificatePEM, isPrivateKey: false),
      PEMFile(name: Self.caKeyFileName, contents: caKeyPEM, isPrivateKey: true),
      PEMFile(name: Self.serverCertificateFileName, contents: serverCertificatePEM, isPrivateKey: false),
      PEMFile(name: Self.serverKeyFileName, contents: serverKeyPEM, isPrivateKey: true),
    ]
    for device in devices { files += device.files }
    return try Self.write(files, to: directory, force: force)
  }

  static func deviceName(_ number: Int) -> String { "device-\(number)" }
}

// MARK: - Issuing

extension DevelopmentCertificates {
  /// A CA certificate and its key, issuing leaf certificates.
  private struct Issuer {
    var certificate: Certificate
    var key: Certificate.PrivateKey

    func issue(
      subject: DistinguishedName, publicKey: Certificate.PublicKey, notBefore: Date, notAfter: Date,
      usage: ExtendedKeyUsage.Usage, subjectAlternativeNames names: SubjectAlternativeNames?,
      signingKey: [UInt8]? = nil
    ) throws -> Certificate {
      let authorityKey = (try? certificate.extensions.subjectKeyIdentifier)?.keyIdentifier
      return try DevelopmentCertificates.issue(
        Certificate(
          version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: publicKey,
          notValidBefore: max(notBefore, certificate.notValidBefore),
          notValidAfter: min(notAfter, certificate.notValidAfter), issuer: certificate.subject,
          subject: subject,
          extensions: Certificate.Extensions {
            Critical(BasicConstraints.notCertificateAuthority)
            Critical(KeyUsage(digitalSignature: true))
            try ExtendedKeyUsage([usage])
            SubjectKeyIdentifier(hash: publicKey)
            if let authorityKey { AuthorityKeyIdentifier(keyIdentifier: authorityKey) }
            if let names { names }
            if let signingKey { DeviceSigningKeyExtension.extension(publicKey: signingKey) }
          },
          issuerPrivateKey: key),
        what: "certificate \(subject)")
    }

    func issueDevice(number: Int, notBefore: Date, notAfter: Date) throws -> Device {
      let deviceKey = P256.Signing.PrivateKey()
      let name = DevelopmentCertificates.deviceName(number)
      // The signing key is libsodium's (the secure-aggregation code signs with it), from a seed
      // of the system's generator; only the seed is kept, in the key file.
      var seed = SecAggCrypto.randomSeed()
      var pair = SecAggCrypto.signingPair(seed: seed)
      defer {
        SecAggCrypto.zero(&seed)
        SecAggCrypto.zero(&pair.secretKey)
      }
      let certificate = try issue(
        subject: DistinguishedName {
          OrganizationName("Cohort")
          CommonName(name)
        },
        publicKey: Certificate.PublicKey(deviceKey.publicKey), notBefore: notBefore, notAfter: notAfter,
        usage: .clientAuth, subjectAlternativeNames: nil, signingKey: pair.publicKey)
      return Device(
        number: number, certificatePEM: try DevelopmentCertificates.pem(certificate, what: name),
        keyPEM: deviceKey.pemRepresentation, signingKeyPEM: DeviceSigningKeyFile.pem(seed: seed))
    }
  }

  private static func makeDevice(
    number: Int, caCertificatePEM: String, caKeyPEM: String, validity: Duration,
    source: (caCertificatePEM: String, caKeyPEM: String)
  ) throws -> Device {
    guard number >= 1 else {
      throw CohortError(
        .invalidConfiguration, "device numbers start at 1, got \(number)", fix: "pass a number of 1 or more")
    }
    let (notBefore, notAfter) = try validityPeriod(validity)
    let certificate: Certificate
    do {
      certificate = try Certificate(pemEncoded: caCertificatePEM)
    } catch {
      throw CohortError(
        .invalidData, "\(source.caCertificatePEM) is not a PEM certificate: \(error)",
        fix: "pass the ca.pem that `cohort certs create` wrote")
    }
    let key: Certificate.PrivateKey
    do {
      key = try Certificate.PrivateKey(pemEncoded: caKeyPEM)
    } catch {
      throw CohortError(
        .invalidData, "\(source.caKeyPEM) is not a PEM private key: \(error)",
        fix: "pass the ca-key.pem that `cohort certs create` wrote")
    }
    guard case .isCertificateAuthority = try? certificate.extensions.basicConstraints else {
      throw CohortError(
        .invalidData, "\(source.caCertificatePEM) is not a CA certificate (\(certificate.subject))",
        fix: "pass the ca.pem that `cohort certs create` wrote, not a server or device certificate")
    }
    guard key.publicKey == certificate.publicKey else {
      throw CohortError(
        .invalidData, "\(source.caKeyPEM) is not the private key of \(source.caCertificatePEM)",
        fix: "pass the ca.pem and ca-key.pem that `cohort certs create` wrote together")
    }
    guard certificate.notValidAfter > Date() else {
      throw CohortError(
        .invalidData, "\(source.caCertificatePEM) expired on \(certificate.notValidAfter)",
        fix: "make a new CA with `cohort certs create` and reissue the server and device certificates")
    }
    return try Issuer(certificate: certificate, key: key).issueDevice(
      number: number, notBefore: notBefore, notAfter: notAfter)
  }

  private static func issue(_ make: @autoclosure () throws -> Certificate, what: String) throws -> Certificate
  {
    do {
      return try make()
    } catch let error as CohortError {
      throw error
    } catch {
      throw CohortError(.invalidConfiguration, "could not make \(what): \(error)")
    }
  }

  private static func pem(_ certificate: Certificate, what: String) throws -> String {
    do {
      return try certificate.serializeAsPEM().pemString
    } catch {
      throw CohortError(.invalidConfiguration, "could not encode \(what) as PEM: \(error)")
    }
  }

  /// From an hour ago (clock skew between machines) to `validity` from now.
  private static func validityPeriod(_ validity: Duration) throws -> (notBefore: Date, notAfter: Date) {
    let (seconds, attoseconds) = validity.components
    let interval = Double(seconds) + Double(attoseconds) / 1e18
    guard interval > 0 else {
      throw CohortError(
        .invalidConfiguration, "certificate validity must be positive, got \(validity)",
        fix: "pass --days D with D ≥ 1")
    }
    let now = Date()
    return (now.addingTimeInterval(-3600), now.addingTimeInterval(interval))
  }
}

// MARK: - Subject alternative names

extension DevelopmentCertificates {
  /// `hosts` followed by ``defaultHosts``, without repeats: IP literals as IP addresses, the rest as
  /// DNS names.
  static func subjectAlternativeNames(for hosts: [String]) throws -> SubjectAlternativeNames {
    var names: [GeneralName] = []
    var seenAddresses: Set<[UInt8]> = []
    var seenNames: Set<String> = []
    for host in hosts + defaultHosts {
      var text = host.trimmingCharacters(in: .whitespaces)
      if text.hasPrefix("[") && text.hasSuffix("]") { text = String(text.dropFirst().dropLast()) }
      if let address = ipAddressBytes(text) {
        if seenAddresses.insert(address).inserted {
          names.append(.ipAddress(.init(contentBytes: address[...])))
        }
      } else if isDNSName(text) {
        if seenNames.insert(text.lowercased()).inserted { names.append(.dnsName(text)) }
      } else {
        throw CohortError(
          .invalidConfiguration,
          "host '\(host)' is neither an IPv4 or IPv6 address nor a DNS name",
          fix: "pass host names like cohort.example.com or addresses like 10.0.0.5 or fe80::1 to --hosts")
      }
    }
    return SubjectAlternativeNames(names)
  }

  /// The 4 or 16 bytes of an IPv4 or IPv6 literal, in network order; nil for anything else.
  static func ipAddressBytes(_ text: String) -> [UInt8]? {
    var v4 = in_addr()
    if inet_pton(AF_INET, text, &v4) == 1 { return withUnsafeBytes(of: &v4) { Array($0) } }
    var v6 = in6_addr()
    if inet_pton(AF_INET6, text, &v6) == 1 { return withUnsafeBytes(of: &v6) { Array($0) } }
    return nil
  }

  /// Dot-separated labels of letters, digits, `-` and `_`; the first may be the wildcard `*`.
  private static func isDNSName(_ text: String) -> Bool {
    guard !text.isEmpty, text.utf8.count <= 253 else { return false }
    let labels = text.split(separator: ".", omittingEmptySubsequences: false)
    for (index, label) in labels.enumerated() {
      if index == 0 && label == "*" && labels.count > 1 { continue }
      guard !label.isEmpty, label.utf8.count <= 63 else { return false }
      let valid = label.utf8.allSatisfy {
        ($0 >= UInt8(ascii: "a") && $0 <= UInt8(ascii: "z"))
          || ($0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z"))
          || ($0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9")) || $0 == UInt8(ascii: "-")
          || $0 == UInt8(ascii: "_")
      }
      guard valid, !label.hasPrefix("-"), !label.hasSuffix("-") else { return false }
    }
    return true
  }
}

// MARK: - Files

extension DevelopmentCertificates {
  fileprivate struct PEMFile {
    var name: String
    var contents: String
    var isPrivateKey: Bool
  }

  /// Writes every file into `directory` (created if missing): keys with mode 0600, certificates
  /// 0644. Without `force`, checks first that none exists, so a refusal writes nothing.
  fileprivate static func write(_ files: [PEMFile], to directory: String, force: Bool) throws -> [String] {
    do {
      try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    } catch {
      throw CohortError(
        .io, "could not create directory \(directory): \(error.localizedDescription)",
        fix: "check that the path is writable or pass another --out directory")
    }
    let paths = files.map { directory.hasSuffix("/") ? directory + $0.name : directory + "/" + $0.name }
    if !force {
      for path in paths where FileManager.default.fileExists(atPath: path) {
        throw refusal(path)
      }
    }
    for (file, path) in zip(files, paths) {
      try writeFile(path, contents: file.contents, mode: file.isPrivateKey ? 0o600 : 0o644, force: force)
    }
    return paths
  }

  private static func refusal(_ path: String) -> CohortError {
    CohortError(
      .io, "\(path) already exists; not overwriting it",
      fix: "pass --force to replace the existing certificates and keys, or choose another --out directory")
  }

  /// Creates (or with `force` truncates) `path` with `mode`, so a key is never readable by others,
  /// not even while it is being written.
  private static func writeFile(_ path: String, contents: String, mode: mode_t, force: Bool) throws {
    // O_NOFOLLOW: a symlink planted where a key goes is not followed (with --force too).
    let flags = O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | (force ? O_TRUNC : O_EXCL)
    let descriptor = open(path, flags, mode)
    guard descriptor >= 0 else {
      let code = errno
      if code == EEXIST { throw refusal(path) }
      if code == ELOOP {
        throw CohortError(
          .io, "\(path) is a symbolic link; not writing a key through it",
          fix: "remove the link or choose another --out directory")
      }
      throw CohortError(
        .io, "could not create \(path): \(String(cString: strerror(code)))",
        fix: "check that the directory is writable")
    }
    defer { close(descriptor) }
    // An existing file keeps its old mode when truncated; set it.
    guard fchmod(descriptor, mode) == 0 else {
      throw CohortError(.io, "could not set the mode of \(path): \(String(cString: strerror(errno)))")
    }
    let code = writeAll(descriptor, Array(contents.utf8))
    guard code == 0 else {
      throw CohortError(.io, "could not write \(path): \(String(cString: strerror(code)))")
    }
  }

  fileprivate static func readText(_ path: String, what: String) throws -> String {
    guard let data = FileManager.default.contents(atPath: path) else {
      throw CohortError(
        .io, "could not read the \(what) \(path)",
        fix: "pass the path of the file that `cohort certs create` wrote")
    }
    return String(decoding: data, as: UTF8.self)
  }
}

/// Writes all of `bytes` to `descriptor`; 0, or the `errno` of the failed write. Outside the type,
/// whose `write` methods would shadow the system call.
private func writeAll(_ descriptor: Int32, _ bytes: [UInt8]) -> Int32 {
  var written = 0
  while written < bytes.count {
    let result = bytes[written...].withUnsafeBytes { write(descriptor, $0.baseAddress, $0.count) }
    if result < 0 {
      if errno == EINTR { continue }
      return errno
    }
    written += result
  }
  return 0
}
