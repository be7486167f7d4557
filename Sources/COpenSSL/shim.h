// OpenSSL calls that are macros (or need a C callback), wrapped so Swift can call them.
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>
#include <openssl/evp.h>
#include <openssl/core_names.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include <openssl/ec.h>
#include <string.h>

static inline int wp_ssl_ctx_tls13_only(SSL_CTX *ctx) {
    return SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) && SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
}
static inline long wp_ssl_ctx_set_mode(SSL_CTX *ctx, long mode) { return SSL_CTX_set_mode(ctx, mode); }
/// Whole writes (the output BIO never refuses, so SSL_write seals everything it is given at once; partial
/// writes would return after each 16 KiB record), and OpenSSL's buffers released while idle.
static inline long wp_ssl_mode_whole_writes(void) { return SSL_MODE_RELEASE_BUFFERS; }
static inline void wp_ssl_ctx_read_ahead(SSL_CTX *ctx) { SSL_CTX_set_read_ahead(ctx, 1); }
static inline uint64_t wp_ssl_op_no_ticket(void) { return SSL_OP_NO_TICKET; }
static inline int wp_ssl_ctx_set_groups(SSL_CTX *ctx, const char *list) { return SSL_CTX_set1_groups_list(ctx, list); }
static inline long wp_ssl_ctx_session_cache_off(SSL_CTX *ctx) { return SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF); }

static inline int wp_sk_general_name_num(const GENERAL_NAMES *names) { return sk_GENERAL_NAME_num(names); }
static inline const GENERAL_NAME *wp_sk_general_name_value(const GENERAL_NAMES *names, int i) { return sk_GENERAL_NAME_value(names, i); }
static inline void wp_general_names_free(GENERAL_NAMES *names) { GENERAL_NAMES_free(names); }
/// The URI of a GENERAL_NAME of type GEN_URI, else NULL (the union is not reachable from Swift reliably).
static inline const ASN1_IA5STRING *wp_general_name_uri(const GENERAL_NAME *name) {
    return name->type == GEN_URI ? name->d.uniformResourceIdentifier : NULL;
}
/// The DNS name of a GENERAL_NAME of type GEN_DNS, else NULL.
static inline const ASN1_IA5STRING *wp_general_name_dns(const GENERAL_NAME *name) {
    return name->type == GEN_DNS ? name->d.dNSName : NULL;
}

/// ALPN: the server accepts only "h2" (HBONE); a client offering anything else fails the handshake.
static int wp_alpn_select_h2(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                             const unsigned char *in, unsigned int inlen, void *arg) {
    (void)ssl; (void)arg;
    for (unsigned int i = 0; i < inlen; i += 1 + in[i]) {
        if (in[i] == 2 && i + 3 <= inlen && memcmp(in + i + 1, "h2", 2) == 0) {
            *out = in + i + 1;
            *outlen = 2;
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}
static inline void wp_ssl_ctx_require_alpn_h2(SSL_CTX *ctx) { SSL_CTX_set_alpn_select_cb(ctx, wp_alpn_select_h2, NULL); }

/// TLS 1.2 or later (an HTTPS API server, not HBONE).
static inline int wp_ssl_ctx_tls12_or_later(SSL_CTX *ctx) { return SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION); }
/// SNI for a client connection (a macro in OpenSSL).
static inline long wp_ssl_set_server_name(SSL *ssl, const char *name) { return SSL_set_tlsext_host_name(ssl, name); }

/// An EC P-256 key pair generated in memory (a macro over a variadic call in OpenSSL 3); NULL on failure.
static inline EVP_PKEY *wp_ec_p256_key(void) { return EVP_EC_gen("P-256"); }

/// A certificate signing request as ztunnel makes one: an empty subject, one URI SAN (critical, as RFC 5280
/// asks when the subject is empty), signed with SHA-256 by `key`; as PEM in a memory BIO, NULL on failure.
static inline BIO *wp_csr_with_uri_san(EVP_PKEY *key, const char *uri) {
    X509_REQ *req = X509_REQ_new();
    STACK_OF(X509_EXTENSION) *extensions = sk_X509_EXTENSION_new_null();
    GENERAL_NAMES *names = GENERAL_NAMES_new();
    GENERAL_NAME *name = GENERAL_NAME_new();
    ASN1_IA5STRING *text = ASN1_IA5STRING_new();
    X509_EXTENSION *san = NULL;
    BIO *out = NULL;
    if (!req || !extensions || !names || !name || !text || !ASN1_STRING_set(text, uri, -1)) goto done;
    GENERAL_NAME_set0_value(name, GEN_URI, text);
    text = NULL;
    if (!sk_GENERAL_NAME_push(names, name)) goto done;
    name = NULL;
    san = X509V3_EXT_i2d(NID_subject_alt_name, 1, names);
    if (!san || !sk_X509_EXTENSION_push(extensions, san)) goto done;
    san = NULL;
    if (!X509_REQ_set_version(req, 0) || !X509_REQ_set_pubkey(req, key) || !X509_REQ_add_extensions(req, extensions)
        || !X509_REQ_sign(req, key, EVP_sha256())) goto done;
    out = BIO_new(BIO_s_mem());
    if (out && !PEM_write_bio_X509_REQ(out, req)) { BIO_free(out); out = NULL; }
done:
    X509_EXTENSION_free(san);
    ASN1_IA5STRING_free(text);
    GENERAL_NAME_free(name);
    GENERAL_NAMES_free(names);
    sk_X509_EXTENSION_pop_free(extensions, X509_EXTENSION_free);
    X509_REQ_free(req);
    return out;
}

/// The bytes held by a memory BIO (a macro in OpenSSL).
static inline long wp_bio_mem_data(BIO *bio, char **data) { return BIO_get_mem_data(bio, data); }
/// Adds one certificate of the chain sent after the leaf (a macro in OpenSSL); takes its own reference.
static inline long wp_ssl_ctx_add1_chain_cert(SSL_CTX *ctx, X509 *cert) { return SSL_CTX_add1_chain_cert(ctx, cert); }
/// Frees memory OpenSSL allocated (a macro in OpenSSL).
static inline void wp_openssl_free(void *pointer) { OPENSSL_free(pointer); }

/// A public key from its JSON Web Key parts (RFC 7518 §6): RSA modulus and exponent, big-endian; NULL when
/// OpenSSL refuses them.
static inline EVP_PKEY *wp_rsa_public_key(const unsigned char *n, size_t n_len, const unsigned char *e, size_t e_len) {
    BIGNUM *bn_n = BN_bin2bn(n, (int)n_len, NULL), *bn_e = BN_bin2bn(e, (int)e_len, NULL);
    OSSL_PARAM_BLD *build = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL);
    EVP_PKEY *key = NULL;
    if (bn_n && bn_e && build && ctx && OSSL_PARAM_BLD_push_BN(build, OSSL_PKEY_PARAM_RSA_N, bn_n)
        && OSSL_PARAM_BLD_push_BN(build, OSSL_PKEY_PARAM_RSA_E, bn_e) && (params = OSSL_PARAM_BLD_to_param(build))
        && EVP_PKEY_fromdata_init(ctx) == 1) {
        if (EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) != 1) key = NULL;
    }
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(build);
    EVP_PKEY_CTX_free(ctx);
    BN_free(bn_n);
    BN_free(bn_e);
    return key;
}

/// A public key on the named curve ("P-256", "P-384") from its uncompressed point (0x04 || x || y); NULL when
/// the point is not on the curve.
static inline EVP_PKEY *wp_ec_public_key(const char *curve, const unsigned char *point, size_t point_len) {
    OSSL_PARAM params[3];
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_PKEY_PARAM_GROUP_NAME, (char *)curve, 0);
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_PKEY_PARAM_PUB_KEY, (void *)point, point_len);
    params[2] = OSSL_PARAM_construct_end();
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
    EVP_PKEY *key = NULL;
    if (ctx && EVP_PKEY_fromdata_init(ctx) == 1 && EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) != 1) key = NULL;
    EVP_PKEY_CTX_free(ctx);
    if (key) {  // fromdata does not check the point: a key off the curve must not verify anything
        EVP_PKEY_CTX *check = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
        int ok = check && EVP_PKEY_public_check(check) == 1;
        EVP_PKEY_CTX_free(check);
        if (!ok) { EVP_PKEY_free(key); key = NULL; }
    }
    return key;
}

/// Verifies `sig` over `data` with `key` and the digest named (SHA256/384/512). `pss`: RSASSA-PSS with a salt as
/// long as the digest (JWS PS256...). `raw_ecdsa_half`: the signature is JWS's r || s, each this many bytes
/// (converted to DER here); 0 for RSA. 1 when valid.
static inline int wp_verify_signature(EVP_PKEY *key, const char *digest, int pss, size_t raw_ecdsa_half,
                                      const unsigned char *sig, size_t sig_len, const unsigned char *data, size_t data_len) {
    unsigned char *der = NULL;
    int der_len = 0;
    if (raw_ecdsa_half) {
        if (sig_len != 2 * raw_ecdsa_half) return 0;
        ECDSA_SIG *ecdsa = ECDSA_SIG_new();
        BIGNUM *r = BN_bin2bn(sig, (int)raw_ecdsa_half, NULL), *s = BN_bin2bn(sig + raw_ecdsa_half, (int)raw_ecdsa_half, NULL);
        if (!ecdsa || !r || !s || ECDSA_SIG_set0(ecdsa, r, s) != 1) {
            BN_free(r); BN_free(s); ECDSA_SIG_free(ecdsa);
            return 0;
        }
        der_len = i2d_ECDSA_SIG(ecdsa, &der);
        ECDSA_SIG_free(ecdsa);
        if (der_len <= 0) return 0;
        sig = der;
        sig_len = (size_t)der_len;
    }
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    EVP_PKEY_CTX *pctx = NULL;
    int ok = md && EVP_DigestVerifyInit_ex(md, &pctx, digest, NULL, NULL, key, NULL) == 1;
    if (ok && pss) {
        ok = EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) == 1
            && EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) == 1;
    }
    ok = ok && EVP_DigestVerify(md, sig, sig_len, data, data_len) == 1;
    EVP_MD_CTX_free(md);
    OPENSSL_free(der);
    return ok;
}

/// The key's size in bits (an RSA modulus, an EC group order).
static inline int wp_pkey_bits(const EVP_PKEY *key) { return EVP_PKEY_get_bits(key); }
